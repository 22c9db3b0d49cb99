"""Storage: sandboxed paths (nothing outside the configured roots), atomic artifacts (latents,
encodings, images), and the SQLite stores (the bridge's jobs, the Kafka answers copy).

Imports config and errors only.
"""
