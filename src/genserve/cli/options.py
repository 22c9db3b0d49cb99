"""The pipeline commands' options, one per request field, and how they become a request body.

Each option is named after the spec's field (``image_path`` -> ``--image-path``) and defaults to
None, meaning "not given". ``request_body`` drops what was not given, so the service fills it from
the config exactly as it does for a REST or Kafka request that leaves the field out. Values are
not checked here: the service validates them, so a bad value gets the same INVALID_INPUT error
JSON through the CLI as through every other door.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from genserve.errors import ErrorCode, GenserveError

# Fields that live in a sub-object of the request, as the spec nests them.
NESTED: dict[str, str] = {
    "seed": "sampling_params",
    "steps": "sampling_params",
    "cfg": "sampling_params",
    "sampler_name": "sampling_params",
    "scheduler": "sampling_params",
    "denoise": "sampling_params",
    "shift": "model_transform_params",
    "strength": "model_transform_params",
}
# Options naming a file or folder: a shell user types them relative to the current folder.
PATH_FIELDS = frozenset(
    {
        "image_path",
        "image1_path",
        "image2_path",
        "image3_path",
        "positive_encoding_file",
        "negative_encoding_file",
        "latent_file",
        "output_dir",
    }
)
PATHS_NOTE = (
    "Paths: a relative path that exists from the current folder is used from there; "
    "any other is looked up inside the configured storage roots, which every path must lie in."
)


def _opt(help_text: str) -> Any:
    return typer.Option(help=help_text, show_default=False)


def _cfg(help_text: str, key: str) -> Any:
    return _opt(f"{help_text} Unset: config pipeline.{key}.")


# -- global, models and devices ----------------------------------------------------------------------
Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        dir_okay=False,
        help="YAML config file. Unset: $GENSERVE_CONFIG, else ./genserve.yaml if present, else defaults. "
        "GENSERVE_SECTION__KEY variables override its keys.",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ModelsDir = Annotated[
    Path | None,
    typer.Option("--dir", help="Models folder to build into. Unset: config models.dir.", show_default=False),
]
ImagesDir = Annotated[
    Path | None,
    typer.Option(
        help="Where the demo person/cloth images go. Unset: first read root / inputs.", show_default=False
    ),
]
DemoSeed = Annotated[int, typer.Option("--seed", help="Seed for the random weights and images.")]
Force = Annotated[bool, typer.Option("--force", help="Rebuild models that already exist.")]
IfMissing = Annotated[
    bool, typer.Option("--if-missing", help="Do nothing (exit 0) when the folder already holds the demo set.")
]
Formats = Annotated[
    bool,
    typer.Option("--formats", help="Also write the demo models in every file layout users hold (demo_*)."),
]

# -- common to every pipeline command --------------------------------------------------------------
RequestId = Annotated[
    str | None, _opt("Request id for the response and file names. Unset: the JSON input's, else a UUID.")
]
JsonInput = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        dir_okay=False,
        readable=True,
        help="JSON file with the request body as the REST spec writes it, or a Kafka message "
        '({"request_id", "service", "input": {...}}). Options given on the command line override its fields.',
        show_default=False,
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output on stderr.")]

# -- inputs ------------------------------------------------------------------------------------
ImagePath = Annotated[str | None, _opt("Image to encode, inside a read root.")]
Image1Path = Annotated[str | None, _opt("First reference image (the image to edit, e.g. the masked person).")]
Image2Path = Annotated[str | None, _opt("Second reference image (e.g. the cloth).")]
Image3Path = Annotated[str | None, _opt("Optional third reference image.")]
Prompt = Annotated[str | None, _opt("The edit instruction.")]
NegativePrompt = Annotated[str | None, _opt("Negative prompt (used when cfg != 1). Unset: empty.")]
PositiveEncodingFile = Annotated[str | None, _opt("Positive encoding file from encode-text.")]
NegativeEncodingFile = Annotated[
    str | None, _opt("Negative encoding file from encode-text; required when cfg != 1.")
]
LatentFile = Annotated[str | None, _opt("Latent file (from encode-latent or sample).")]

# -- models ------------------------------------------------------------------------------------
VaeModelName = Annotated[str | None, _cfg("VAE under models/vae.", "vae_model_name")]
ClipModelName = Annotated[str | None, _cfg("Text encoder under models/text_encoders.", "clip_model_name")]
UnetModelName = Annotated[
    str | None, _cfg("Diffusion model under models/diffusion_models.", "unet_model_name")
]
LoraModelName = Annotated[str | None, _cfg("LoRA under models/loras; '' for none.", "lora_model_name")]
LoraStrength = Annotated[float | None, _cfg("LoRA strength.", "lora_strength")]

# -- image sizes -------------------------------------------------------------------------------
UpscaleMethodOpt = Annotated[
    str | None,
    _cfg(
        "Resampling for the scale to megapixels: nearest, bilinear, bicubic, area, lanczos.", "upscale_method"
    ),
]
Megapixels = Annotated[float | None, _cfg("Area of the image before encoding, in megapixels.", "megapixels")]
VaeReferenceMegapixels = Annotated[
    float | None,
    _cfg("Area each reference image is resized to for its VAE latent.", "vae_reference_megapixels"),
]
VisionReferenceMegapixels = Annotated[
    float | None,
    _cfg("Area each reference image gets for the vision encoder.", "vision_reference_megapixels"),
]

# -- sampling (sampling_params / model_transform_params) --------------------------------------------
Seed = Annotated[int | None, _opt("Noise seed; the same seed gives the same image. Unset: 0.")]
Steps = Annotated[int | None, _cfg("Sampling steps.", "steps")]
Cfg = Annotated[float | None, _cfg("Classifier-free guidance scale; 1 skips the negative.", "cfg")]
SamplerName = Annotated[str | None, _cfg("Sampler: euler, euler_ancestral, heun, dpmpp_2m.", "sampler_name")]
Scheduler = Annotated[str | None, _cfg("Sigma schedule, e.g. simple.", "scheduler")]
Denoise = Annotated[float | None, _cfg("Denoise strength in (0, 1].", "denoise")]
Shift = Annotated[float | None, _cfg("AuraFlow sigma shift (model_transform_params.shift).", "shift")]
Strength = Annotated[
    float | None, _cfg("CFGNorm strength (model_transform_params.strength).", "cfg_norm_strength")
]

# -- outputs -----------------------------------------------------------------------------------
OutputDir = Annotated[
    str | None, _opt("Output folder inside a write root. Unset: config storage.default_output_dir.")
]
OutputFilename = Annotated[
    str | None, _opt("Output file name stem; the request id is appended. Unset: the service's default.")
]
OutputFormat = Annotated[str | None, _cfg("Image format: jpg, png or webp.", "output_format")]


def _cli_path(value: str) -> str:
    """A relative path that exists from the current folder becomes absolute; the sandbox still checks it."""
    candidate = Path(value)
    if value and not candidate.is_absolute() and candidate.exists():
        return str(candidate.resolve())
    return value


def request_body(base: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` (the JSON input) overlaid with the options that were given; None means not given."""
    body: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for name, value in given.items():
        if value is None:
            continue
        if name in PATH_FIELDS:
            value = _cli_path(value)
        parent = NESTED.get(name)
        if parent is None:
            body[name] = value
            continue
        section = body.get(parent)
        if not isinstance(section, dict):
            section = {}
        section[name] = value
        body[parent] = section
    return body


@dataclass(frozen=True)
class JsonRequest:
    """A request read from ``--json-input``: a REST body, or the ``input`` of a Kafka message."""

    body: dict[str, Any]
    request_id: str | None = None
    service: str | None = None

    def check_service(self, service: str) -> None:
        if self.service not in (None, service):
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"--json-input: the message is for service {self.service!r}, this command runs {service!r}",
                field="service",
            )


def read_json_input(path: Path) -> JsonRequest:
    """Parse the file; a bad one is INVALID_INPUT, like a bad body through any other door."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GenserveError(
            ErrorCode.INVALID_INPUT, f"--json-input: cannot read {path} as JSON: {exc}", field="json_input"
        ) from None
    if not isinstance(data, dict):
        raise GenserveError(ErrorCode.INVALID_INPUT, f"--json-input: {path} must hold a JSON object")
    request_id = data.pop("request_id", None)
    request_id = None if request_id is None else str(request_id)
    if isinstance(data.get("input"), dict):  # a Kafka message: the body is under "input"
        service = data.get("service")
        return JsonRequest(dict(data["input"]), request_id, None if service is None else str(service))
    return JsonRequest(data, request_id)
