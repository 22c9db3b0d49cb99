"""The doors: protocol adapters that turn wire messages into typed requests for the engine."""
