"""One settings model for the whole server.

Loaded once at start-up from a YAML file plus ``GENSERVE_SECTION__KEY`` environment variables
(env wins). Lower layers receive values as arguments and never read the environment themselves,
so a bad key or value fails here, at start-up, with a message that names it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from genserve.config_bridge import BridgeSettings
from genserve.config_cluster import ClusterSettings
from genserve.config_lipsync import LipsyncSettings

ENV_PREFIX = "GENSERVE_"
CONFIG_ENV = "GENSERVE_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsSettings(_Section):
    dir: Path = Field(Path("models"), description="Models folder: one sub-folder per kind (vae/, ...).")
    max_loaded: int = Field(8, ge=1, description="Most models kept loaded at once, all devices together.")
    memory_budget_mb: dict[str, int] = Field(
        default_factory=dict,
        description="Per-device memory budget in MiB for loaded models, e.g. {cpu: 8192, 'cuda:0': 20000}. "
        "A device not named has no budget beyond its count limit.",
    )
    default_device: str = Field(
        "auto", description="'auto' (first CUDA device, else cpu), 'cpu' or 'cuda:N'."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype: auto = float32 on CPU, bfloat16 on CUDA."
    )


class StorageSettings(_Section):
    read_roots: list[Path] = Field(
        default_factory=lambda: [Path("data")],
        description="Folders that requests may read images and tensors from. Output roots are readable too.",
    )
    write_roots: list[Path] = Field(
        default_factory=lambda: [Path("data/outputs")],
        description="Folders that requests may write into (output_dir must lie inside one).",
    )
    default_output_dir: Path = Field(
        Path("data/outputs"), description="Where outputs go when a request names none."
    )

    @field_validator("read_roots", "write_roots")
    @classmethod
    def _not_empty(cls, roots: list[Path]) -> list[Path]:
        if not roots:
            raise ValueError("at least one root is required")
        return roots


class EngineSettings(_Section):
    queue_size: int = Field(64, ge=1, description="Requests waiting per device before new ones are refused.")
    workers_per_device: int = Field(1, ge=1, description="Executor threads per device.")
    devices: list[str] = Field(
        default_factory=list,
        description="Devices that run requests, e.g. [cpu] or ['cuda:0', 'cuda:1']; "
        "empty = models.default_device. A request goes to the least busy one.",
    )
    device_workers: dict[str, int] = Field(
        default_factory=dict,
        description="Executor threads for named devices, overriding workers_per_device, e.g. {'cuda:0': 2}.",
    )
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads on CPU; 0 = torch's default.")


class ServerSettings(_Section):
    """The network server (``genserve serve``): where it listens and how it treats requests."""

    host: str = Field("127.0.0.1", description="Address the REST door listens on; 0.0.0.0 = every interface.")
    port: int = Field(
        8000, ge=0, le=65535, description="REST port; 0 picks a free one (printed at start-up)."
    )
    request_timeout_s: float = Field(
        600.0, gt=0, description="Longest a request may run; an X-Request-Timeout header may ask for less."
    )
    shutdown_grace_s: float = Field(
        60.0, ge=0, description="On SIGTERM/SIGINT, how long in-flight requests get to finish."
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted (413 beyond).")
    retry_after_s: int = Field(
        1, ge=1, description="Retry-After (seconds) sent with 429 when the queue is full."
    )
    access_log: bool = Field(True, description="Log one line per HTTP request (with its request id).")
    keep_freed_memory_mb: int = Field(
        1024,
        ge=0,
        le=2047,
        description="glibc: allocations up to this size come from the heap, and freed memory up to it is "
        "kept for reuse instead of going back to the OS (large gRPC messages parse 3-5x quicker). 0 = off.",
    )


class GrpcSettings(_Section):
    """The gRPC door, started by ``genserve serve`` beside the REST door."""

    enabled: bool = Field(True, description="Serve gRPC at all.")
    host: str = Field("127.0.0.1", description="Address the gRPC ports listen on; 0.0.0.0 = every interface.")
    ports: list[int] = Field(
        default_factory=lambda: [50053],
        description="Ports serving every gRPC service, e.g. [50053, 7859]; 0 picks a free one.",
    )
    max_message_mb: int = Field(100, ge=1, le=2047, description="Largest gRPC message either way, in MiB.")
    keepalive_time_s: float = Field(60.0, gt=0, description="Ping an idle connection this often.")
    keepalive_timeout_s: float = Field(
        20.0, gt=0, description="Drop a connection whose ping goes unanswered."
    )
    shutdown_grace_s: float = Field(30.0, ge=0, description="How long in-flight RPCs get to finish on stop.")
    upload_max_mb: int = Field(
        32768, ge=1, description="Largest model file UploadFile accepts, in MiB (the stream is cut beyond)."
    )

    @field_validator("ports")
    @classmethod
    def _valid_ports(cls, ports: list[int]) -> list[int]:
        if not ports or any(not 0 <= p <= 65535 for p in ports):
            raise ValueError("one or more ports between 0 and 65535 are required")
        return ports


class KafkaSettings(_Section):
    """The Kafka door: one consumer per service in the group ``<service>-group``."""

    enabled: bool = Field(False, description="Start the Kafka door with `genserve serve`.")
    bootstrap_servers: list[str] = Field(default_factory=list, description="Brokers, e.g. ['kafka:9092'].")
    services: list[str] = Field(
        default_factory=lambda: ["latent_encoder", "text_encoder", "sampling", "decoding", "edit"],
        description="Services this worker consumes requests for.",
    )
    request_topics: dict[str, str] = Field(
        default_factory=dict, description="Request topic per service; default <service-with-dashes>-requests."
    )
    response_topics: dict[str, str] = Field(
        default_factory=dict,
        description="Response topic per service when a message names none; default <service>-responses.",
    )
    group_prefix: str = Field("", description="Prepended to every consumer group (<prefix><service>-group).")
    max_in_flight: int = Field(4, ge=1, le=1024, description="Messages a worker works on at once.")
    session_timeout_s: float = Field(
        10.0, gt=0, description="A worker silent this long is dead; its work moves."
    )
    rebalance_timeout_s: float = Field(60.0, gt=0, description="How long a rebalance waits for held work.")
    topic_partitions: int = Field(4, ge=1, description="Partitions of the topics the door creates.")
    fetch_max_wait_s: float = Field(0.1, gt=0, le=10, description="Longest a fetch waits at the broker.")
    responses_keep_s: float = Field(
        7 * 24 * 3600,
        gt=0,
        description="Answers older than this are forgotten: pruned from responses_db at start, skipped when "
        "reading answers_topic, and its retention when the door creates it.",
    )
    responses_db: Path = Field(
        Path("data/kafka-responses.sqlite"),
        description="This host's copy of answers_topic (SQLite), where a redelivered request id is looked "
        "up, so that it is answered again, not recomputed.",
    )
    answers_topic: str = Field(
        "genserve-answers",
        pattern=r"^[A-Za-z0-9._-]{1,249}$",
        description="Compacted topic of every answer, keyed <service>/<request_id>, shared by all workers on "
        "all hosts; one per deployment that shares a cluster.",
    )


class FilesSettings(_Section):
    """The drop-folder door: request_{id}.json in, outputs and response_{id}.json out."""

    enabled: bool = Field(False, description="Start the drop-folder door with `genserve serve`.")
    input_dir: Path = Field(Path("data/drop"), description="Where writers rename request_{id}.json in.")
    output_dir: Path = Field(Path("data/outputs/drop"), description="Where outputs and responses go.")
    poll_interval_s: float = Field(0.5, gt=0, le=60, description="How often the input folder is scanned.")
    max_in_flight: int = Field(2, ge=1, le=256, description="Requests worked on at once.")


class WorkflowsSettings(_Section):
    """The native ComfyUI-compatible backend: /prompt, /queue, /history, /view, /upload/image, /ws."""

    enabled: bool = Field(
        True, description="Serve ComfyUI's API (POST /prompt, WS /ws, ...) on the REST door."
    )
    input_dir: Path = Field(
        Path("data/inputs"),
        description="ComfyUI's input folder (LoadImage, /upload/image); inside a read root.",
    )
    output_dir: Path = Field(
        Path("data/outputs/workflows"), description="Where SaveImage writes; inside a write root."
    )
    cache_size: int = Field(64, ge=0, description="Node results kept for re-runs (0: no cache).")
    queue_size: int = Field(
        64, ge=1, description="Prompts that may wait; beyond that POST /prompt is refused."
    )


# The names the sampling code accepts, kept here (torch-free) so that a bad default in the config
# stops start-up; tests/unit/test_config.py checks they match services/samplers.py.
SamplerName = Literal["euler", "euler_ancestral", "heun", "dpmpp_2m"]
SchedulerName = Literal["simple", "normal", "sgm_uniform", "karras", "exponential"]
UpscaleMethod = Literal["nearest", "bilinear", "bicubic", "area", "lanczos"]


class PipelineSettings(_Section):
    """Defaults of the Qwen-Image-Edit pipeline, as in the original ComfyUI graph."""

    vae_model_name: str = Field("qwen_image_vae.safetensors", description="VAE when a request names none.")
    clip_model_name: str = Field(
        "qwen_2.5_vl_7b_fp8_scaled.safetensors", description="Text encoder when a request names none."
    )
    unet_model_name: str = Field(
        "qwen_image_edit_2509_fp8_e4m3fn.safetensors",
        description="Diffusion model when a request names none.",
    )
    lora_model_name: str | None = Field(
        None, description="LoRA applied when a request names none (null: no LoRA)."
    )
    vae_reference_megapixels: float = Field(
        1.0, gt=0, le=16, description="Area the text encoder resizes each reference image to for the VAE."
    )
    vision_reference_megapixels: float = Field(
        384 * 384 / 1_000_000,
        gt=0,
        le=4,
        description="Area each reference image gets for the vision encoder.",
    )
    steps: int = Field(4, ge=1, le=1000)
    cfg: float = Field(1.0, ge=0)
    sampler_name: SamplerName = "euler"
    scheduler: SchedulerName = "simple"
    denoise: float = Field(1.0, gt=0, le=1)
    shift: float = Field(3.0, gt=0)
    cfg_norm_strength: float = Field(1.0, ge=0)
    lora_strength: float = 1.0
    upscale_method: UpscaleMethod = "lanczos"
    megapixels: float = Field(1.0, gt=0, le=16)
    output_format: Literal["jpg", "png", "webp"] = "jpg"
    jpeg_quality: int = Field(95, ge=1, le=100, description="Quality for jpg and webp outputs.")


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = Field(False, description="One JSON object per line instead of plain text.")


class Settings(_Section):
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    files: FilesSettings = Field(default_factory=FilesSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    workflows: WorkflowsSettings = Field(default_factory=WorkflowsSettings)
    bridge: BridgeSettings = Field(default_factory=BridgeSettings)
    lipsync: LipsyncSettings = Field(default_factory=LipsyncSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)


class ConfigError(Exception):
    """A config file or variable that cannot start the server; the message names the key."""


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """Turn ``GENSERVE_SECTION__KEY=value`` into nested dicts; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if len(path) < 2 or not all(path):
            raise ConfigError(f"{name}: expected {ENV_PREFIX}SECTION__KEY (two underscores between parts)")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another variable for the same key")
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return tree


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def load_settings(path: Path | str | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read the YAML file (if any) and the environment into validated Settings.

    The file comes from ``path``, else ``$GENSERVE_CONFIG``, else ``genserve.yaml`` when present.
    """
    environ = dict(os.environ if environ is None else environ)
    chosen = path or environ.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    source = "defaults"
    if chosen is None and Path("genserve.yaml").is_file():
        chosen = "genserve.yaml"
    if chosen is not None:
        file = Path(chosen)
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: top level must be a mapping of sections")
        data = loaded
        source = str(file)
    env = _env_overrides(environ)
    if env:
        source += " + environment"
    try:
        return Settings.model_validate(_merge(data, env))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
