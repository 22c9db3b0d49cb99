"""Text generation over causal LMs, with incremental token streaming.

May import models and config; never the engine or a door.
"""
