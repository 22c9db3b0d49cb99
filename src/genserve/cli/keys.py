"""``genserve keys``: the API keys the network doors accept. The key itself is printed once, when
added; the file keeps only its SHA-256, so a lost key is revoked and replaced, never recovered."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from genserve.auth.keys import ApiKey, KeyStore
from genserve.auth.principal import Scope
from genserve.cli.context import fail, print_json, settings_of
from genserve.errors import GenserveError

keys_app = typer.Typer(
    no_args_is_help=True,
    help="API keys for the REST, WebSocket and gRPC doors (auth.keys_file): add, list, revoke.",
)


def _store(ctx: typer.Context) -> KeyStore:
    return KeyStore(settings_of(ctx).auth.keys_file)


@keys_app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="A name for the key's holder (unique), e.g. a client or a person.")
    ],
    scope: Annotated[
        list[Scope],
        typer.Option(
            "--scope",
            "-s",
            help="infer: run work and see its own. admin: also load/unload models, free memory, upload "
            "models, clear queues, see every client's work. Repeat for both; default infer.",
        ),
    ] = [Scope.INFER],  # noqa: B006 - typer reads the default, never mutates it
    json_out: Annotated[bool, typer.Option("--json", help="Print the new key as JSON.")] = False,
) -> None:
    """Add a key and print it once: clients send it as `Authorization: Bearer <key>`. A running
    server picks it up at its next request."""
    try:
        key, token = _store(ctx).add(name, set(scope))
    except GenserveError as err:
        raise fail(err, None) from None
    if json_out:
        print_json({**_row(key), "key": token})
        return
    typer.echo(token)
    scopes = ", ".join(sorted(s.value for s in key.scopes))
    typer.echo(f"added key {key.id} ({key.name}; {scopes}); it is shown only now", err=True)


@keys_app.command("list")
def list_keys(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The keys: id, name, scopes and when each was added (never the keys themselves)."""
    try:
        rows = [_row(k) for k in _store(ctx).all()]
    except GenserveError as err:
        raise fail(err, None) from None
    if json_out:
        print_json(rows)
        return
    table = Table("id", "name", "scopes", "added")
    for row in rows:
        table.add_row(row["id"], row["name"], ", ".join(row["scopes"]), row["added"])
    Console().print(table if rows else "no keys: every door is open (loopback hosts only)")


@keys_app.command("revoke")
def revoke(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key's id or name (from `genserve keys list`).")],
) -> None:
    """Revoke a key: a running server refuses it from its next request."""
    try:
        gone = _store(ctx).revoke(key)
    except GenserveError as err:
        raise fail(err, None) from None
    typer.echo(f"revoked key {gone.id} ({gone.name})")


def _row(key: ApiKey) -> dict[str, object]:
    added = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(key.created))
    return {"id": key.id, "name": key.name, "scopes": sorted(s.value for s in key.scopes), "added": added}
