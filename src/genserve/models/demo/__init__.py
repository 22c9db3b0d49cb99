"""The demo set: tiny models of every kind with random, seeded weights in the real formats, so
every API works on a fresh machine. Imports models (registry, loaders' constants) only.
"""
