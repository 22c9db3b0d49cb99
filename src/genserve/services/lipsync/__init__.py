"""Lip-sync (monolithic.MonolithicService): the inference service, its audio and compositing
stages, device choice, and the admin operations (load, unload, stats, health).

May import models, storage and config; never the engine or a door.
"""
