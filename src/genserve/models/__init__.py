"""Model registry (names -> files), manager (load, pin, evict, stats) and loaders per kind."""
