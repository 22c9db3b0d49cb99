"""The LLM cluster's commands: ``genserve coordinator`` and ``genserve agent`` (titancompute.v1).

Registered on the main Typer app like the door commands. The coordinator imports no torch, so it
starts at once on a host without models; the agent builds the normal runtime over models/llm.
"""

from __future__ import annotations

from typing import Annotated

import typer

from genserve.cli.context import run_door, settings_of


def coordinator(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to listen on (cluster.coordinator_host).")] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help="Port (cluster.coordinator_port, default 50051; 0 = a free one).", min=0, max=65535
        ),
    ] = None,
) -> None:
    """Run the LLM cluster's coordinator: titancompute.v1.CoordinatorService, health and reflection.

    Agents register and stream health to it; clients call RequestInference and get the best
    agent's endpoint with an RS256 session token. The signing key lives in cluster.key_file
    (made on first start, mode 0600, reused after restarts). Prints its address once listening.
    """
    settings = settings_of(ctx)
    cluster = settings.cluster.model_copy(
        update={k: v for k, v in (("coordinator_host", host), ("coordinator_port", port)) if v is not None}
    )
    from genserve.app.cluster import run_coordinator
    from genserve.app.logs import configure_logging

    configure_logging(settings.logging)
    run_door(lambda: run_coordinator(cluster))


def agent(
    ctx: typer.Context,
    coordinator: Annotated[
        str | None, typer.Option(help="Coordinator host:port (cluster.coordinator_address).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (cluster.agent_host).")] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port (cluster.agent_port, default 50052; 0 = a free one).", min=0, max=65535),
    ] = None,
    agent_id: Annotated[str | None, typer.Option(help="Agent id (cluster.agent_id).")] = None,
) -> None:
    """Run an LLM agent: titancompute.v1.AgentService over the models in models.dir/llm.

    Registers with the coordinator (its models, RAM, VRAM, max_jobs), keeps one health stream
    open, and registers again by itself when the coordinator restarts. Clients stream from it
    with the coordinator's session token (checked against the coordinator's public key).
    """
    settings = settings_of(ctx)
    overrides = {"agent_host": host, "agent_port": port, "agent_id": agent_id}
    cluster = settings.cluster.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    settings = settings.model_copy(update={"cluster": cluster})
    from genserve.app.cluster import run_agent  # imports torch

    run_door(lambda: run_agent(settings, coordinator))


def register(app: typer.Typer) -> None:
    app.command("coordinator")(coordinator)
    app.command("agent")(agent)
