"""vlattn built-in plugin: caption."""
