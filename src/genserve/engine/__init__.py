"""The engine: the only way a door runs work."""
