"""Output image node types: SaveImage, SaveImageAdvanced, PreviewImage.

The PNGs carry ComfyUI's metadata: a ``prompt`` text chunk (the API prompt) and one chunk per
``extra_data.extra_pnginfo`` key (``workflow``, the UI graph), each as JSON, so a file dragged
back into ComfyUI restores its graph. Their results are cached like any node's: an identical
prompt re-queued gets the first run's file entries and writes nothing, as in ComfyUI, unless a
listed file is gone (the bridge's /history deletes delivered files) or the run is kept to another
key's folders; then the node runs again.
"""

from __future__ import annotations

import io
import json
import os
import random
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from genserve.storage.artifacts import write_bytes
from genserve.workflows.inputs import Combo, Linked, String
from genserve.workflows.nodes.base import NodeContext, NodeResult, NodeType
from genserve.workflows.nodes.values import PipelineResources, resources_of, tensor_to_images
from genserve.workflows.owners import CLIENTS

# ComfyUI's zlib levels: 4 for saved images, 1 for previews (speed over size).
SAVE_COMPRESS_LEVEL, PREVIEW_COMPRESS_LEVEL = 4, 1


def png_bytes(
    image: Image.Image,
    prompt: Mapping[str, Any] | None,
    extra_pnginfo: Mapping[str, Any] | None,
    compress_level: int = SAVE_COMPRESS_LEVEL,
) -> bytes:
    """A PNG with ComfyUI's text chunks: ``prompt``, then each extra_pnginfo key, as JSON."""
    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(str(key), json.dumps(value))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()


def _next_free(folder: Path, stem: str) -> tuple[Path, int]:
    """Claim ``{stem}_{counter:05}_.png`` (ComfyUI's naming) with an exclusive create, so two runs
    saving at once never pick the same name."""
    prefix = f"{stem}_"
    counters = [
        int(name[len(prefix) : len(prefix) + 5])
        for name in os.listdir(folder)
        if name.startswith(prefix) and name[len(prefix) : len(prefix) + 5].isdigit()
    ]
    counter = max(counters, default=0) + 1
    while True:
        path = folder / f"{stem}_{counter:05}_.png"
        try:
            with open(path, "xb"):
                return path, counter
        except FileExistsError:
            counter += 1


def write_pngs(
    ctx: NodeContext, images: torch.Tensor, filename_prefix: str, kind: str, compress_level: int
) -> list[dict[str, str]]:
    """Save each image under the ``kind`` folder (output or temp); returns ComfyUI's ``ui.images`` entries.

    Every node that writes images (SaveImage, PreviewImage, the preview nodes) goes through here,
    so file names, PNG metadata (``prompt``/``workflow``) and a confined key's folder are the same
    for all of them.
    """
    res = resources_of(ctx)
    parts = filename_prefix.replace("\\", "/").split("/")
    stem = res.sandbox.output_name(parts[-1], "filename_prefix")
    subfolders = [res.sandbox.output_name(part, "filename_prefix") for part in parts[:-1] if part]
    if res.confined is not None:  # a key without admin writes into its own folder
        subfolders = [CLIENTS, res.confined, *subfolders]
    base = res.temp_root() if kind == "temp" else res.output_dir
    root = res.sandbox.output_dir(base, "filename_prefix", name="workflows.output_dir")
    folder = res.sandbox.output_dir(root.joinpath(*subfolders), "filename_prefix", name=filename_prefix)
    saved = []
    for image in tensor_to_images(images, keep_alpha=True):
        ctx.check_cancelled()
        path, _ = _next_free(folder, stem)
        data = png_bytes(image, ctx.prompt, ctx.extra_pnginfo, compress_level)
        write_bytes(path, data, durable=kind == "output")
        saved.append({"filename": path.name, "subfolder": "/".join(subfolders), "type": kind})
    return saved


def _save_image(ctx: NodeContext, images: torch.Tensor, filename_prefix: str = "ComfyUI") -> NodeResult:
    saved = write_pngs(ctx, images, filename_prefix, "output", SAVE_COMPRESS_LEVEL)
    return NodeResult((), ui={"images": saved})


def _save_image_advanced(
    ctx: NodeContext, images: torch.Tensor, filename_prefix: str = "ComfyUI", format: str = "png", **_: Any
) -> NodeResult:
    """PNG, 8-bit sRGB: the only choice genserve's combos offer (ComfyUI adds EXR and AVIF)."""
    saved = write_pngs(ctx, images, filename_prefix, "output", SAVE_COMPRESS_LEVEL)
    return NodeResult((images,), ui={"images": saved})


def _preview_image(ctx: NodeContext, images: torch.Tensor) -> NodeResult:
    """Into the temp folder under a random prefix, as ComfyUI's PreviewImage; /view serves type=temp."""
    suffix = "".join(random.choices(string.ascii_lowercase, k=5))
    saved = write_pngs(ctx, images, f"ComfyUI_temp_{suffix}", "temp", PREVIEW_COMPRESS_LEVEL)
    return NodeResult((), ui={"images": saved})


def files_still_there(result: NodeResult, resources: Any) -> bool:
    """Whether a cached save may stand for this run: every listed file exists, in the folder this
    run would write to (a confined key's own, or outside every key's folder), and the run does
    not take its files away afterwards (``own_outputs``)."""
    if not isinstance(resources, PipelineResources) or resources.own_outputs:
        return False
    own = f"{CLIENTS}/{resources.confined}" if resources.confined is not None else None
    for entry in (result.ui or {}).get("images", []):
        subfolder = str(entry.get("subfolder", ""))
        inside_clients = subfolder == CLIENTS or subfolder.startswith(CLIENTS + "/")
        if own is not None and subfolder != own and not subfolder.startswith(own + "/"):
            return False
        if own is None and inside_clients:
            return False
        base = resources.temp_root() if entry.get("type") == "temp" else resources.output_root()
        if not (base / subfolder / str(entry.get("filename", ""))).is_file():
            return False
    return True


def saving_node_types() -> list[NodeType]:
    return [
        NodeType(
            "SaveImage",
            _save_image,
            required={
                "images": Linked("IMAGE", tooltip="The images to save."),
                "filename_prefix": String("ComfyUI", tooltip="The prefix for the file to save."),
            },
            display_name="Save Image",
            description="Saves the input images to your ComfyUI output directory.",
            category="image",
            output_node=True,
            reusable=files_still_there,
        ),
        NodeType(
            "SaveImageAdvanced",
            _save_image_advanced,
            required={
                "images": Linked("IMAGE"),
                "filename_prefix": String("ComfyUI"),
                "format": Combo(("png",), default="png"),
            },
            optional={
                "format.bit_depth": Combo(("8-bit",), default="8-bit"),
                "format.input_color_space": Combo(("sRGB",), default="sRGB"),
            },
            return_types=("IMAGE",),
            return_names=("images",),
            display_name="Save Image (Advanced)",
            category="image/advanced_io",
            output_node=True,
            reusable=files_still_there,
        ),
        NodeType(
            "PreviewImage",
            _preview_image,
            required={"images": Linked("IMAGE")},
            display_name="Preview Image",
            description="Saves the input images to your ComfyUI temp directory.",
            category="image",
            output_node=True,
            reusable=files_still_there,
        ),
    ]
