"""vlattn built-in plugin: draw."""
