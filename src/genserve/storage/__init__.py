"""Sandboxed paths and the files that pass between services."""
