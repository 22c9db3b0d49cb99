"""Who may call the network doors: API keys (hashed at rest) with scopes, the principal a request
runs as, and the start-up rule that a server reachable beyond loopback needs keys.

Doors (api/, rpc/) import this; it imports only config, errors and the standard library, so every
door checks the same keys the same way.
"""
