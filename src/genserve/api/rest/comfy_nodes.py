"""ComfyUI's ``/object_info``: the node classes the prompt runner knows, with their inputs and outputs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from genserve.api.rest.dependencies import PromptQueueDep

router = APIRouter(tags=["comfyui"])


@router.get("/object_info")
async def object_info(executor: PromptQueueDep) -> dict[str, Any]:
    return executor.runner.registry.object_info()


@router.get("/object_info/{node_class}")
async def object_info_one(node_class: str, executor: PromptQueueDep) -> dict[str, Any]:
    if node_class not in executor.runner.registry:
        return {}
    return executor.runner.registry.object_info(node_class)
