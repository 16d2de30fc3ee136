"""vlattn built-in plugin: text."""
