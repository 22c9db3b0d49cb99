"""The doors: protocol adapters that turn wire messages into typed requests for the engine and
typed results (or the one error type) back into wire messages: rest/, grpc/, kafka/, files.py.

A door imports engine, services, workflows, bridge, models, storage, config and rpc; never another
door, app/ or cli/. ``request_ids`` is the one rule every door takes request ids by.
"""
