"""The services: plain functions over typed requests, one module each."""
