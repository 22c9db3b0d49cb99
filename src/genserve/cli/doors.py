"""The commands that run doors: ``serve``, ``test``, ``file-worker`` and ``kafka-worker``.

Kept apart from the pipeline commands in main.py; registered on the same Typer app so that
``genserve --help`` lists them together.
"""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from genserve.cli.context import run_door, settings_of


def serve(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (server.host; 0.0.0.0 = every interface).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="REST port (server.port; 0 picks a free one).")] = None,
) -> None:
    """Start the server: REST on server.host:server.port (default 127.0.0.1:8000) and gRPC on
    grpc.ports (default 50053), with every door the config turns on.

    REST serves the pipeline endpoints (/api/v1/latent/encode, /text/encode, /sampling/sample,
    /decoding/decode, /edit), model admin (/api/v1/models), the OpenAI-compatible /v1 API, ComfyUI's
    API (/prompt, /queue, /history, /view, /ws, also under /comfy), the workflow bridge (/ws,
    /workflow-list, /generate-based-workflow, ...), /health/live, /health/ready, /metrics and the
    API docs at /docs. gRPC serves LatentEncoder, TextEncoder, Sampler, Decoder, Editor,
    drawthings.ImageGenerationService, monolithic.MonolithicService (lip-sync), health and
    reflection. The drop folder (files.enabled) and Kafka (kafka.enabled) run beside them. Every
    address is printed once the server accepts requests. SIGTERM or Ctrl-C lets in-flight work
    finish, then unloads the models. `make run` builds the demo models first if they are missing.
    """
    settings = settings_of(ctx)
    from genserve.app.server import serve as run_server  # imports torch and the web stack

    run_door(lambda: run_server(settings, host=host, port=port))


def file_worker(ctx: typer.Context) -> None:
    """Run the drop-folder door alone: request_{id}.json files in files.input_dir are answered in
    files.output_dir (outputs, metadata_{id}.json, response_{id}.json).

    Writers must write elsewhere and rename the finished file into the input folder. Requests
    move to claimed/, then done/ or failed/ (with the error response) under the input folder;
    claims left by a crash are resumed at start. SIGTERM or Ctrl-C finishes the requests in hand.
    """
    settings = settings_of(ctx)
    from genserve.app.workers import run_file_worker

    run_door(lambda: run_file_worker(settings))


def kafka_worker(
    ctx: typer.Context,
    session_timeout_s: Annotated[
        float | None, typer.Option(help="A worker silent this long is dead (kafka.session_timeout_s).")
    ] = None,
    rebalance_timeout_s: Annotated[
        float | None,
        typer.Option(help="How long a rebalance waits for held work (kafka.rebalance_timeout_s)."),
    ] = None,
    topic_partitions: Annotated[
        int | None,
        typer.Option(help="Partitions of the topics the door creates (kafka.topic_partitions)."),
    ] = None,
    max_in_flight: Annotated[
        int | None, typer.Option(help="Messages worked on at once (kafka.max_in_flight).")
    ] = None,
    fetch_max_wait_s: Annotated[
        float | None, typer.Option(help="Longest a fetch waits at the broker (kafka.fetch_max_wait_s).")
    ] = None,
    responses_keep_s: Annotated[
        float | None, typer.Option(help="Answers older than this are forgotten (kafka.responses_keep_s).")
    ] = None,
) -> None:
    """Run the Kafka door alone: one consumer per service in the group `<service>-group`,
    answering requests from `<service>-requests` on `output.topic` or `<service>-responses`.

    Needs kafka.bootstrap_servers. Offsets are committed only after the answer is produced; an
    answered request id is answered again from the store, not recomputed; unusable messages get
    an error answer and go to `<service>-dlq`. Start several workers to share the partitions.
    Each option overrides the kafka setting it names. SIGTERM or Ctrl-C finishes held work and
    commits; a second signal stops at once.
    """
    settings = settings_of(ctx)
    flags = {
        "session_timeout_s": session_timeout_s,
        "rebalance_timeout_s": rebalance_timeout_s,
        "topic_partitions": topic_partitions,
        "max_in_flight": max_in_flight,
        "fetch_max_wait_s": fetch_max_wait_s,
        "responses_keep_s": responses_keep_s,
    }
    try:
        for key, value in flags.items():
            if value is not None:
                setattr(settings.kafka, key, value)  # validated like the setting itself
    except ValidationError as exc:
        problem = exc.errors()[0]
        flag = "--" + str(problem["loc"][0]).replace("_", "-")
        typer.echo(f"genserve: {flag}: {problem['msg']}", err=True)
        raise typer.Exit(2) from None
    from genserve.app.workers import run_kafka_worker

    run_door(lambda: run_kafka_worker(settings))


def test_server(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Server address (default: grpc.host).")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port (default: the first of grpc.ports).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server.")] = 10.0,
) -> None:
    """Check that a genserve gRPC server answers: Echo must say HELLO and health must say SERVING.

    Exits 0 when both hold; otherwise 1 with a message saying what failed (no answer, a wrong
    echo, or a health status other than SERVING).
    """
    settings = settings_of(ctx)
    from genserve.api.grpc.probe import probe

    target = f"{host or settings.grpc.host}:{port if port is not None else settings.grpc.ports[0]}"
    report = probe(target, timeout)
    for line in report.lines:
        typer.echo(line)
    if not report.healthy:
        typer.echo(f"genserve: {target} is not healthy: {report.problem}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("file-worker")(file_worker)
    app.command("kafka-worker")(kafka_worker)
    app.command("test")(test_server)
