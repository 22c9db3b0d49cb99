"""The workflow bridge: a durable job queue, the backends it runs jobs on (this process's prompt
queue, ComfyUI servers), balancing, uploads and per-client progress. Imports workflows, engine,
storage and config; never a door.
"""
