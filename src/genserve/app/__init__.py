"""The composition root: builds the runtime (engine, model manager and pools, workflow queue,
bridge, lip-sync admin) from settings, and starts and stops every door.

May import every layer below it; only ``cli/`` imports it.
"""
