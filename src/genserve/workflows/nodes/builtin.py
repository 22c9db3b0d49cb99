"""The ComfyUI node types genserve runs on its own models: one registry for the native runner.

Class names, input names and return types are ComfyUI's, so workflows saved with ComfyUI's
"Save (API)" run unchanged; the work is done by genserve's services and ModelManager. Nodes
read what they need from ``ctx.resources``, a ``PipelineResources`` (nodes_values).
"""

from __future__ import annotations

from pathlib import Path

from genserve.models.registry import ModelRegistry
from genserve.workflows.nodes.base import NodeRegistry
from genserve.workflows.nodes.camera import camera_node_types
from genserve.workflows.nodes.conditioning import conditioning_node_types
from genserve.workflows.nodes.controlnet import controlnet_node_types
from genserve.workflows.nodes.custom_sampling import custom_sampling_node_types
from genserve.workflows.nodes.image import image_node_types
from genserve.workflows.nodes.image_filters import image_filter_node_types
from genserve.workflows.nodes.image_ops import image_ops_node_types
from genserve.workflows.nodes.masks import mask_node_types
from genserve.workflows.nodes.models import model_node_types
from genserve.workflows.nodes.previews import preview_node_types
from genserve.workflows.nodes.primitives import primitive_node_types
from genserve.workflows.nodes.qwen21 import qwen21_node_types
from genserve.workflows.nodes.sampling import sampling_node_types
from genserve.workflows.nodes.saving import saving_node_types
from genserve.workflows.nodes.text import text_node_types
from genserve.workflows.nodes.values import ClipRef, ModelRef, PipelineResources, VaeRef

__all__ = ["ClipRef", "ModelRef", "PipelineResources", "VaeRef", "pipeline_registry"]


def pipeline_registry(models: ModelRegistry | None = None, input_dir: Path | None = None) -> NodeRegistry:
    """Every pipeline node type.

    With ``models``, model inputs are combos over the models folder (as ComfyUI's loaders list
    files); with ``input_dir`` (the same folder as ``PipelineResources.input_dir``), LoadImage lists
    its images and fingerprints the chosen file, so an edited file is read again. Without them
    those inputs are free strings checked when the node runs, and LoadImage is never cached.
    """
    return NodeRegistry(
        [
            *image_node_types(Path(input_dir) if input_dir is not None else None),
            *model_node_types(models),
            *controlnet_node_types(models),
            *sampling_node_types(),
            *conditioning_node_types(),
            *qwen21_node_types(),
            *custom_sampling_node_types(),
            *image_filter_node_types(),
            *image_ops_node_types(),
            *mask_node_types(),
            *preview_node_types(),
            *saving_node_types(),
            *primitive_node_types(),
            *text_node_types(),
            *camera_node_types(),
        ]
    )
