"""The workflow bridge: a durable job queue with its bounds and fair order, the backends it runs
jobs on (this process's prompt queue, ComfyUI servers), balancing, uploads, results kept for
``/history`` and per-client progress. Imports workflows, engine, storage and config; never a door.
"""
