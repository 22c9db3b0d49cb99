"""ComfyUI's UI-format workflows (what "Save" writes and the templates ship) turned into API format.

A UI workflow describes a canvas: ``nodes`` with positional ``widgets_values``, ``links`` (lists
``[id, origin_id, origin_slot, target_id, target_slot, type]`` in version 0.4, objects in version 1
and in subgraph definitions), ``groups``, ``definitions.subgraphs`` and ``extra``. The runner needs
API format: per node its ``class_type`` and ``inputs`` by name. ``ui_to_api`` converts with the
rules of the frontend's graph-to-prompt, so a workflow dropped here queues the same prompt
ComfyUI's own page would:

- widget values are named by the node type's ``/object_info`` input order, counting the extra
  values the frontend keeps beside some widgets and never sends (``control_after_generate`` after
  a ``seed``/``noise_seed`` INT or a widget that asks for it, LoadImage's ``upload`` button);
- virtual nodes are dropped: notes, reroutes (followed through), ``PrimitiveNode`` (its value
  pushed into the widgets it feeds), KJNodes' ``SetNode``/``GetNode`` (joined by name);
- muted nodes (mode 2) are dropped with the inputs that read them; bypassed ones (mode 4) hand
  each reader the input of the matching type;
- subgraphs are flattened, inner nodes named ``"<instance id>:<inner id>"`` as ComfyUI names them.

A node type the registry does not know is kept with its links, so validation names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from genserve.workflows.nodes.base import NodeRegistry
from genserve.workflows.ui_subgraphs import Flattener, ObjectInfo, UIWorkflowError

__all__ = ["UIWorkflowError", "is_ui_workflow", "registry_object_info", "ui_to_api"]


def is_ui_workflow(data: Any) -> bool:
    """UI format has top-level ``nodes`` (a list) and ``links``; an API prompt is keyed by node id."""
    return isinstance(data, Mapping) and isinstance(data.get("nodes"), list) and "links" in data


def ui_to_api(
    workflow: Mapping[str, Any], object_info: ObjectInfo, *, source: str = "the workflow"
) -> dict[str, Any]:
    """The API-format prompt for a UI-format ``workflow``; ``object_info`` names a type's widgets.

    Raises UIWorkflowError (INVALID_INPUT), its message naming ``source``, for anything that is
    not a well-formed UI workflow.
    """
    try:
        if not is_ui_workflow(workflow):
            raise UIWorkflowError("it needs a 'nodes' list and 'links'")
        return Flattener(workflow, object_info).prompt()
    except UIWorkflowError as exc:
        raise UIWorkflowError(exc.reason, source) from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise UIWorkflowError(f"malformed: {type(exc).__name__}: {exc}", source) from exc


def registry_object_info(registry: NodeRegistry) -> ObjectInfo:
    """``object_info`` for one ``ui_to_api`` call from a node registry (None for a type it lacks)."""

    seen: dict[str, Mapping[str, Any] | None] = {}

    def lookup(name: str) -> Mapping[str, Any] | None:
        if name not in seen:  # object_info lists model files: once per type per conversion
            node_type = registry.get(name)
            seen[name] = None if node_type is None else node_type.object_info()
        return seen[name]

    return lookup
