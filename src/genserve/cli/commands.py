"""The command-line door: every pipeline service, the demo models and the devices, from a shell.

Like every door it only turns arguments into a request, hands it to the engine and turns the
response (or the one error type) back into output: the response JSON on stdout and nothing else,
so commands chain through ``jq``; progress and human messages on stderr; the exit code from the
error table. Modules that import torch are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from genserve.cli import cluster, doors
from genserve.cli import options as opt
from genserve.cli.context import fail, print_json, settings_of
from genserve.cli.keys import keys_app
from genserve.cli.progress import ProgressView, restore_logs, route_logs
from genserve.cli.workflow import workflow_app
from genserve.errors import ErrorCode, GenserveError, as_genserve_error

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstrings are hard-wrapped: re-flow their paragraphs
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = typer.Typer(no_args_is_help=True, help="Models on disk: list them, build the demo set.")
app.add_typer(models_app, name="models")
app.add_typer(workflow_app, name="workflow")
app.add_typer(keys_app, name="keys")


@app.callback()
def main_options(ctx: typer.Context, config: opt.Config = None) -> None:
    """genserve: serve generative models over REST, gRPC, Kafka, a drop folder and ComfyUI's API
    (`serve`), run one door alone, run the pipeline's services here, or run an LLM cluster."""
    ctx.obj = config  # read by each command, so that --help works even with a broken config


def _stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def _run_service(ctx: typer.Context, service: str, params: dict[str, Any]) -> None:
    """Build the request from the JSON input and the given options, run it, print the response."""
    params.pop("ctx", None)
    request_id: str | None = params.pop("request_id")
    json_input: Path | None = params.pop("json_input")
    quiet: bool = params.pop("quiet")
    settings = settings_of(ctx)
    rid = request_id or str(uuid.uuid4())
    from genserve.app.runtime import build_runtime  # imports torch: only once a command runs

    try:
        base: dict[str, Any] = {}
        if json_input is not None:
            loaded = opt.read_json_input(json_input)
            rid = request_id or loaded.request_id or rid
            loaded.check_service(service)
            base = loaded.body
        request = opt.request_body(base, params)
        console = Console(stderr=True) if not quiet and _stderr_is_tty() else None
        runtime = build_runtime(settings)
        previous = route_logs(sys.stderr)  # this command's stderr, until the runtime has closed
        try:
            with ProgressView(console) as view:
                response = runtime.engine.run_sync(service, request, request_id=rid, progress=view)
        finally:
            runtime.close()
            restore_logs(previous)
    except GenserveError as err:
        raise fail(err, rid) from None
    except KeyboardInterrupt:
        raise fail(GenserveError(ErrorCode.CANCELLED, "interrupted"), rid) from None
    except Exception as exc:
        raise fail(as_genserve_error(exc), rid) from None
    print_json(response.model_dump(mode="json"))


# -- pipeline commands (parameter names are the request's field names) --------------------------


@app.command("encode-latent", epilog=opt.PATHS_NOTE)
def encode_latent(
    ctx: typer.Context,
    image_path: opt.ImagePath = None,
    vae_model_name: opt.VaeModelName = None,
    output_dir: opt.OutputDir = None,
    upscale_method: opt.UpscaleMethodOpt = None,
    megapixels: opt.Megapixels = None,
    request_id: opt.RequestId = None,
    json_input: opt.JsonInput = None,
    quiet: opt.Quiet = False,
) -> None:
    """latent_encoder: scale an image to a pixel budget and VAE-encode it to a latent file."""
    _run_service(ctx, "latent_encoder", dict(locals()))


@app.command("encode-text", epilog=opt.PATHS_NOTE)
def encode_text(
    ctx: typer.Context,
    image1_path: opt.Image1Path = None,
    image2_path: opt.Image2Path = None,
    image3_path: opt.Image3Path = None,
    prompt: opt.Prompt = None,
    negative_prompt: opt.NegativePrompt = None,
    clip_model_name: opt.ClipModelName = None,
    vae_model_name: opt.VaeModelName = None,
    output_dir: opt.OutputDir = None,
    vae_reference_megapixels: opt.VaeReferenceMegapixels = None,
    vision_reference_megapixels: opt.VisionReferenceMegapixels = None,
    request_id: opt.RequestId = None,
    json_input: opt.JsonInput = None,
    quiet: opt.Quiet = False,
) -> None:
    """text_encoder: encode a prompt and up to three reference images into encoding files for sample."""
    _run_service(ctx, "text_encoder", dict(locals()))


@app.command("sample", epilog=opt.PATHS_NOTE)
def sample(
    ctx: typer.Context,
    positive_encoding_file: opt.PositiveEncodingFile = None,
    negative_encoding_file: opt.NegativeEncodingFile = None,
    latent_file: opt.LatentFile = None,
    unet_model_name: opt.UnetModelName = None,
    lora_model_name: opt.LoraModelName = None,
    lora_strength: opt.LoraStrength = None,
    seed: opt.Seed = None,
    steps: opt.Steps = None,
    cfg: opt.Cfg = None,
    sampler_name: opt.SamplerName = None,
    scheduler: opt.Scheduler = None,
    denoise: opt.Denoise = None,
    shift: opt.Shift = None,
    strength: opt.Strength = None,
    output_dir: opt.OutputDir = None,
    request_id: opt.RequestId = None,
    json_input: opt.JsonInput = None,
    quiet: opt.Quiet = False,
) -> None:
    """sampling: denoise a latent with the diffusion model (and LoRA) under the given encodings."""
    _run_service(ctx, "sampling", dict(locals()))


@app.command("decode", epilog=opt.PATHS_NOTE)
def decode(
    ctx: typer.Context,
    latent_file: opt.LatentFile = None,
    vae_model_name: opt.VaeModelName = None,
    output_filename: opt.OutputFilename = None,
    output_dir: opt.OutputDir = None,
    output_format: opt.OutputFormat = None,
    request_id: opt.RequestId = None,
    json_input: opt.JsonInput = None,
    quiet: opt.Quiet = False,
) -> None:
    """decoding: VAE-decode a latent file to a jpg, png or webp image."""
    _run_service(ctx, "decoding", dict(locals()))


@app.command("edit", epilog=opt.PATHS_NOTE)
def edit(
    ctx: typer.Context,
    image1_path: opt.Image1Path = None,
    image2_path: opt.Image2Path = None,
    image3_path: opt.Image3Path = None,
    prompt: opt.Prompt = None,
    negative_prompt: opt.NegativePrompt = None,
    vae_model_name: opt.VaeModelName = None,
    clip_model_name: opt.ClipModelName = None,
    unet_model_name: opt.UnetModelName = None,
    lora_model_name: opt.LoraModelName = None,
    lora_strength: opt.LoraStrength = None,
    seed: opt.Seed = None,
    steps: opt.Steps = None,
    cfg: opt.Cfg = None,
    sampler_name: opt.SamplerName = None,
    scheduler: opt.Scheduler = None,
    denoise: opt.Denoise = None,
    shift: opt.Shift = None,
    strength: opt.Strength = None,
    upscale_method: opt.UpscaleMethodOpt = None,
    megapixels: opt.Megapixels = None,
    vae_reference_megapixels: opt.VaeReferenceMegapixels = None,
    vision_reference_megapixels: opt.VisionReferenceMegapixels = None,
    output_filename: opt.OutputFilename = None,
    output_dir: opt.OutputDir = None,
    output_format: opt.OutputFormat = None,
    request_id: opt.RequestId = None,
    json_input: opt.JsonInput = None,
    quiet: opt.Quiet = False,
) -> None:
    """edit: the whole pipeline in one call (encode-latent, encode-text, sample, decode in memory)."""
    _run_service(ctx, "edit", dict(locals()))


# -- models and devices ---------------------------------------------------------------------------


def _human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


@models_app.command("demo")
def models_demo(
    ctx: typer.Context,
    models_dir: opt.ModelsDir = None,
    images_dir: opt.ImagesDir = None,
    seed: opt.DemoSeed = 0,
    force: opt.Force = False,
    if_missing: opt.IfMissing = False,
    formats: opt.Formats = False,
) -> None:
    """Build tiny demo models (random weights, real file formats) so every service runs on a fresh machine.

    With --formats, also write them again in every layout users hold (ComfyUI single files with bare or
    prefixed keys, fp8 plain or scaled, the Wan-layout VAE, the old-layout text encoder with its
    tokenizer folder, LoRAs in the Lightning, ComfyUI, kohya and peft layouts, a diffusers snapshot and a
    hub-cache folder), each named demo_*, to try them through the same loaders; and a tiny
    Qwen-Image-Layered transformer and RGBA VAE under ComfyUI's names.
    """
    settings = settings_of(ctx)
    from genserve.models.demo import pipeline as demo

    root = models_dir or settings.models.dir
    images = images_dir or settings.storage.read_roots[0] / "inputs"
    if if_missing and demo.demo_present(root):
        typer.echo(f"demo models already present in {root}; nothing to do")
        if not all((images / name).is_file() for name in ("person.png", "cloth.png")):
            demo.build_images(images, seed=seed)
            typer.echo(f"  image    demo images written to {images}")
        return
    report = demo.build_demo(root, images, seed, force)
    typer.echo(f"demo models in {report.root}")
    for label in report.built:
        typer.echo(f"  built    {label}")
    for label in report.skipped:
        typer.echo(f"  skipped  {label} (exists; --force rebuilds it)")
    for image in report.images:
        typer.echo(f"  image    {image}")
    if formats:
        from genserve.models.demo.layouts import write_every_layout

        for path in write_every_layout(root):
            typer.echo(f"  layout   {path.relative_to(root)}")
    typer.echo(f"done in {report.seconds:.1f} s")


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: opt.AsJson = False) -> None:
    """List every model on disk or named by the config, by kind: the format detected from its
    files, its weights' dtype, its size, and the memory mode (with its bytes) it would load with.

    A CLI process has nothing loaded; `GET /api/v1/models` on a running server shows the same
    rows with what is loaded, where, and its stats.
    """
    settings = settings_of(ctx)
    from genserve.app.runtime import build_runtime
    from genserve.models.inventory import configured_models, inventory
    from genserve.models.registry import ModelKind

    with build_runtime(settings) as runtime:
        loaded = [stats.to_dict() for stats in runtime.models.loaded()]
        rows = inventory(runtime.models, configured_models(settings.pipeline))
    kinds: dict[str, list[dict[str, Any]]] = {kind.value: [] for kind in ModelKind}
    for row in rows:
        item = row.to_dict()
        kinds[item.pop("kind")].append(item)
    if as_json:
        print_json({"models_dir": str(settings.models.dir), "models": kinds, "loaded": loaded})
        return
    table = Table(title=f"models in {settings.models.dir}")
    for column in (
        "kind",
        "name",
        "format",
        "dtype",
        "size on disk",
        "memory mode",
        "configured as",
        "loaded",
    ):
        table.add_column(column)
    for kind, items in kinds.items():
        for item in items:
            size = _human_bytes(item["size_bytes"]) if item["on_disk"] else "missing"
            stored = ", fp8" if item["fp8_stored"] else ""
            size_there = _human_bytes(item["loaded_bytes"])
            mode = f"{item['memory_mode']}{stored} ({size_there})" if item["memory_mode"] else ""
            used = ", ".join(item["configured_as"])
            row = (kind, item["name"], item["format"], item["dtype"], size, mode, used)
            table.add_row(*row, "yes" if item["loaded"] else "")
    Console().print(table)


@app.command("devices")
def devices(ctx: typer.Context, as_json: opt.AsJson = False) -> None:
    """List the devices models can run on (CUDA GPUs first, then the CPU) with their memory."""
    settings_of(ctx)  # a bad config stops every command, not only those that use it
    from genserve.models.devices import list_devices

    found = [device.to_dict() for device in list_devices()]
    if as_json:
        print_json(found)
        return
    table = Table()
    for column in ("name", "kind", "total", "free", "description"):
        table.add_column(column)
    for d in found:
        free = "?" if d["free_bytes"] is None else _human_bytes(d["free_bytes"])
        table.add_row(d["name"], d["kind"], _human_bytes(d["total_bytes"]), free, d["description"])
    Console().print(table)


doors.register(app)
cluster.register(app)


def main() -> None:
    """Console-script entry point (``genserve``)."""
    app(prog_name="genserve")
