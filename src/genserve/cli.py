"""The command-line door: every pipeline service, the demo models and the devices, from a shell.

Like every door it only turns arguments into a request, hands it to the engine and turns the
response (or the one error type) back into output: the response JSON on stdout and nothing else,
so commands chain through ``jq``; progress and human messages on stderr; the exit code from the
error table. Modules that import torch are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from genserve import cli_options as opt
from genserve.cli_progress import ProgressView, route_logs
from genserve.config import ConfigError, Settings, load_settings
from genserve.errors import ERROR_TABLE, ErrorCode, GenserveError, as_genserve_error

if TYPE_CHECKING:
    pass

DEMO_PROMPT = "by using the green masked area, put the cloth in picture 2 on the person in picture 1"

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = typer.Typer(no_args_is_help=True, help="Models on disk: list them, build the demo set.")
app.add_typer(models_app, name="models")


@app.callback()
def main_options(ctx: typer.Context, config: opt.Config = None) -> None:
    """genserve: the Qwen-Image-Edit pipeline services and their models, from the command line."""
    ctx.obj = config  # read by each command, so that --help works even with a broken config


def _settings(ctx: typer.Context) -> Settings:
    """Load the config once a command runs; a bad file or key stops here with exit code 2."""
    config = ctx.find_root().obj
    try:
        return load_settings(config)
    except ConfigError as exc:
        Console(stderr=True, highlight=False).print(f"genserve: {exc}", markup=False)
        raise typer.Exit(2) from None


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _fail(err: GenserveError, request_id: str | None) -> typer.Exit:
    """The spec's error JSON on stdout, one line for a person on stderr, the table's exit code."""
    _print_json(err.to_dict(request_id))
    typer.echo(f"genserve: {err.code.value}: {err.message}", err=True)
    return typer.Exit(ERROR_TABLE[err.code].exit_code)


def _stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def _run_service(ctx: typer.Context, service: str, params: dict[str, Any]) -> None:
    """Build the request from the JSON input and the given options, run it, print the response."""
    params.pop("ctx", None)
    request_id: str | None = params.pop("request_id")
    json_input: Path | None = params.pop("json_input")
    quiet: bool = params.pop("quiet")
    settings = _settings(ctx)
    rid = request_id or str(uuid.uuid4())
    from genserve.runtime import build_runtime  # imports torch: only once a command runs

    try:
        base: dict[str, Any] = {}
        if json_input is not None:
            loaded = opt.read_json_input(json_input)
            rid = request_id or loaded.request_id or rid
            loaded.check_service(service)
            base = loaded.body
        request = opt.request_body(base, params)
        console = Console(stderr=True) if not quiet and _stderr_is_tty() else None
        with build_runtime(settings) as runtime:
            route_logs(sys.stderr)
            with ProgressView(console) as view:
                response = runtime.engine.run_sync(service, request, request_id=rid, progress=view)
    except GenserveError as err:
        raise _fail(err, rid) from None
    except KeyboardInterrupt:
        raise _fail(GenserveError(ErrorCode.CANCELLED, "interrupted"), rid) from None
    except Exception as exc:
        raise _fail(as_genserve_error(exc), rid) from None
    _print_json(response.model_dump(mode="json"))


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
) -> None:
    """Build tiny demo models (random weights, real file formats) so every service runs on a fresh machine."""
    settings = _settings(ctx)
    from genserve.models import demo

    root = models_dir or settings.models.dir
    if if_missing and demo.demo_present(root):
        typer.echo(f"demo models already present in {root}; nothing to do")
        return
    report = demo.build_demo(root, images_dir or settings.storage.read_roots[0] / "inputs", seed, force)
    typer.echo(f"demo models in {report.root}")
    for label in report.built:
        typer.echo(f"  built    {label}")
    for label in report.skipped:
        typer.echo(f"  skipped  {label} (exists; --force rebuilds it)")
    for image in report.images:
        typer.echo(f"  image    {image}")
    typer.echo(f"done in {report.seconds:.1f} s")


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: opt.AsJson = False) -> None:
    """List every model on disk by kind, with its size, and which are loaded (none in a CLI process)."""
    settings = _settings(ctx)
    from genserve.models.registry import ModelKind
    from genserve.runtime import build_runtime

    with build_runtime(settings) as runtime:
        loaded = [stats.to_dict() for stats in runtime.models.loaded()]
        entries = runtime.models.registry.entries()
    loaded_keys = {(s["kind"], s["name"]) for s in loaded}
    kinds: dict[str, list[dict[str, Any]]] = {kind.value: [] for kind in ModelKind}
    for entry in entries:
        kinds[entry.kind.value].append(
            {"name": entry.name, "size_bytes": entry.disk_bytes(), "loaded": entry.key in loaded_keys}
        )
    if as_json:
        _print_json({"models_dir": str(settings.models.dir), "models": kinds, "loaded": loaded})
        return
    table = Table(title=f"models in {settings.models.dir}")
    for column in ("kind", "name", "size on disk", "loaded"):
        table.add_column(column)
    for kind, items in kinds.items():
        for item in items:
            table.add_row(
                kind, item["name"], _human_bytes(item["size_bytes"]), "yes" if item["loaded"] else ""
            )
    Console().print(table)


@app.command("devices")
def devices(ctx: typer.Context, as_json: opt.AsJson = False) -> None:
    """List the devices models can run on (CUDA GPUs first, then the CPU) with their memory."""
    _settings(ctx)  # a bad config stops every command, not only those that use it
    from genserve.models.devices import list_devices

    found = [device.to_dict() for device in list_devices()]
    if as_json:
        _print_json(found)
        return
    table = Table()
    for column in ("name", "kind", "total", "free", "description"):
        table.add_column(column)
    for d in found:
        free = "?" if d["free_bytes"] is None else _human_bytes(d["free_bytes"])
        table.add_row(d["name"], d["kind"], _human_bytes(d["total_bytes"]), free, d["description"])
    Console().print(table)


@app.command("serve")
def serve(ctx: typer.Context, quiet: opt.Quiet = False) -> None:
    """Not a server yet: prepares the demo set and runs one real edit, printing its JSON.

    The HTTP/gRPC server is not built yet. This builds the demo models and images if the models
    folder lacks them (like `models demo --if-missing`), shows how to run the pipeline from the
    CLI, then runs one `edit` on the demo images into the default output folder, so a fresh
    machine does real work end to end. Exits 0 only when that edit succeeds.
    """
    settings = _settings(ctx)
    from genserve.models import demo

    err = Console(stderr=True, highlight=False)
    root, images = settings.models.dir, settings.storage.read_roots[0] / "inputs"
    person, cloth = images / "person.png", images / "cloth.png"
    if not demo.demo_present(root):
        with err.status(f"building the demo models in {root}"):
            report = demo.build_demo(root, images_dir=images)
        err.print(f"built the demo models in {root} ({report.seconds:.1f} s)")
    elif not (person.is_file() and cloth.is_file()):
        demo.build_images(images, seed=0)
        err.print(f"wrote the demo images to {images}")
    err.print("[bold]genserve serve: the network server (REST/gRPC) is not built yet.[/bold]")
    err.print("Run the pipeline from the command line instead, e.g.:")
    example = f'genserve edit --image1-path {person} --image2-path {cloth} --prompt "{DEMO_PROMPT}"'
    err.print(f"  {example}", markup=False, soft_wrap=True)  # one line, to copy
    err.print("Running that edit now on the demo images:")
    params = {
        "image1_path": str(person.resolve()),
        "image2_path": str(cloth.resolve()),
        "prompt": DEMO_PROMPT,
    }
    _run_service(ctx, "edit", {**params, "request_id": None, "json_input": None, "quiet": quiet})


def main() -> None:
    """Console-script entry point (``genserve``)."""
    app(prog_name="genserve")
