"""The ``auth`` section: API keys for the network doors and whether an exposed server may be open."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from genserve.config.base import Section


class AuthSettings(Section):
    keys_file: Path = Field(
        Path("auth/keys.json"),
        description="API keys (ids, names, scopes and SHA-256 of their secrets; never the secrets), "
        "managed with `genserve keys add|list|revoke`. No keys: every door is open, which start-up "
        "allows only on loopback hosts unless allow_anonymous is set. Keep it outside storage roots.",
    )
    allow_anonymous: bool = Field(
        False,
        description="Serve without keys on a host beyond loopback (server.host, grpc.host): anyone "
        "who can reach the port may run work and change the server.",
    )
