"""A server reachable beyond this machine must not start open by accident."""

from __future__ import annotations

import ipaddress

from genserve.errors import ErrorCode, GenserveError


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere


def check_exposure(listeners: dict[str, str], has_keys: bool, allow_anonymous: bool) -> None:
    """``listeners`` maps each door's host setting to its value; one beyond loopback with no keys
    stops start-up unless ``auth.allow_anonymous`` says the open door is meant."""
    if has_keys or allow_anonymous:
        return
    exposed = [f"{setting}={host}" for setting, host in listeners.items() if not is_loopback(host)]
    if exposed:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{', '.join(exposed)} listens beyond loopback and no API key exists: add one with "
            "`genserve keys add NAME --scope admin`, or set auth.allow_anonymous: true to serve "
            "anyone who can reach it",
            field="auth.allow_anonymous",
        )
