"""An example third-party vlattn plugin: the template to copy for your own."""
