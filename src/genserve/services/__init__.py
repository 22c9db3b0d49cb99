"""The services: plain functions over typed requests, ``run(request, ctx) -> response``; base.py
holds Service, RunContext and the batching declaration; pipeline/, lipsync/ and text/ the families,
builtin.py every built-in service by its spec name.

Imports models, storage and config; never the engine or a door.
"""
