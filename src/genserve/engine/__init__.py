"""The engine: the only way a door runs work. Lanes per device and per service (lip-sync, the
workflow lane) with bounded queues, submit / stream / enqueue, cancellation, progress, run
observers, dynamic batching for services that declare it, and the ``Runtime`` a door is handed.

Imports services, models, storage and config; never a door, app/ or cli/.
"""
