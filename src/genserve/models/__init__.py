"""Models: the registry (names to files, by kind), the one ModelManager with a pool per kind
(count, memory budget per device, eviction, idle timeout, capacity wait), devices, the inventory;
loaders/ per kind and format, demo/ the demo set.

Imports storage, config and errors; never a service, the engine or a door.
"""
