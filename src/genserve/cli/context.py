"""How every command starts and ends: the settings loaded once a command runs, and one way to
fail (the spec's error JSON on stdout, a line for a person on stderr, the table's exit code)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from genserve.config import ConfigError, Settings, load_settings
from genserve.errors import ERROR_TABLE, ErrorCode, GenserveError


def settings_of(ctx: typer.Context) -> Settings:
    """Load the config once a command runs; a bad file or key stops here with exit code 2."""
    config = ctx.find_root().obj
    try:
        return load_settings(config)
    except ConfigError as exc:
        Console(stderr=True, highlight=False).print(f"genserve: {exc}", markup=False)
        raise typer.Exit(2) from None


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def fail(err: GenserveError, request_id: str | None) -> typer.Exit:
    """The spec's error JSON on stdout, one line for a person on stderr, the table's exit code."""
    print_json(err.to_dict(request_id))
    typer.echo(f"genserve: {err.code.value}: {err.message}", err=True)
    return typer.Exit(ERROR_TABLE[err.code].exit_code)


def run_door(run: Callable[[], None]) -> None:
    """One way for every door command to end: the spec's error JSON, or a line naming the setting."""
    try:
        run()
    except GenserveError as err:
        raise fail(err, None) from None
    except (OSError, ConfigError) as exc:
        Console(stderr=True, highlight=False).print(f"genserve: {exc}", markup=False)
        raise typer.Exit(ERROR_TABLE[ErrorCode.UNAVAILABLE].exit_code) from None
