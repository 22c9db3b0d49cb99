"""Calling one pipeline node type directly, as the runner would: ``run_node(name, **inputs)`` gives
its outputs. ``run_node`` lends the demo runtime's resources (model nodes); ``run_pure`` lends
none, for the nodes that only compute on tensors and need no runtime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from genserve.app.runtime import Runtime
from genserve.workflows.nodes.base import NodeContext, NodeRegistry
from genserve.workflows.nodes.builtin import PipelineResources, pipeline_registry

NodeCall = Callable[..., tuple[Any, ...]]


@pytest.fixture(scope="session")
def pipeline_nodes() -> NodeRegistry:
    return pipeline_registry()


@pytest.fixture
def node_resources(runtime: Runtime, data_root: Path) -> PipelineResources:
    return PipelineResources.from_runtime(runtime, input_dir=data_root / "inputs")


def _caller(registry: NodeRegistry, resources: Any) -> NodeCall:
    def call(node_type: str, /, **inputs: Any) -> tuple[Any, ...]:
        ctx = NodeContext("prompt", "1", node_type, resources=resources)
        return registry[node_type].call(ctx, inputs).outputs

    return call


@pytest.fixture
def run_node(pipeline_nodes: NodeRegistry, node_resources: PipelineResources) -> NodeCall:
    return _caller(pipeline_nodes, node_resources)


@pytest.fixture
def run_pure(pipeline_nodes: NodeRegistry) -> NodeCall:
    return _caller(pipeline_nodes, None)
