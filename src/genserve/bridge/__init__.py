"""The workflow bridge (spec 003): durable queue, backends, balancing and per-client progress."""
