"""The workflow catalog: admin-chosen aliases for workflow files (API or UI format) and their inputs.

A workflow has dozens of inputs; users should see only the few an admin picked (prompt, image,
seed). The admin writes an alias file next to (or anywhere outside) the workflows folder. It is
JSON when its name ends in ``.json`` (the original bridge's ``workflow_alias.json``) and YAML
otherwise; both hold the same structure::

    {
      "text-to-image": {"file": "t2i.json", "inputs": ["6/text", "3/seed"]},
      "image-to-image": {
        "file": "edit/i2i.json",
        "inputs": {"6/text": {"title": "Prompt", "description": "what to show"}, "10/image": null}
      }
    }

``file`` is relative to the workflows folder and must stay inside it (no absolute paths, no
``..``, no symlinks leading out). ``inputs`` lists the exposed inputs as ``"<node id>/<input name>"``,
either as a list or as a mapping whose values optionally override the ``title`` and add a
``description`` shown by ``/workflow-info``. The order given is the order ``info`` answers in.

Problems are per alias, not fatal (one broken workflow must not take the others down): an alias
whose file is missing, is not JSON, fails validation against the node registry, or exposes an input
its node lacks (or that a link feeds) is left out of ``aliases()``, logged once, and asking for it
answers INVALID_INPUT with the reason (``problems()`` lists them for a start-up report or a CLI
check). A default merely missing from a combo's current choices (an example image not uploaded
here yet) only logs a warning. An alias file that cannot be read fails construction (a misconfigured
server should not start looking healthy); if it breaks later, the last good catalog stays in use.

Files are re-read when their mtime or size changes (the alias file and every workflow file it names,
missing ones included), checked on each call, so an admin edits workflows without a restart.

``foreign_nodes=True`` is for bridges whose backends are real ComfyUI servers with node types the
local registry does not know: such nodes are not validated here (their backend does it), and their
exposed inputs take their type from the default value in the workflow file.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.graph import GraphValidationError, is_link, parse_graph
from genserve.workflows.nodes.base import NodeRegistry
from genserve.workflows.ui_format import is_ui_workflow, registry_object_info, ui_to_api

log = logging.getLogger("genserve.workflows.catalog")

# Widget types as /workflow-info names them; a combo is picked by its (string) name.
_TYPE_NAMES = {"INT": "int", "FLOAT": "float", "STRING": "str", "COMBO": "str", "BOOLEAN": "bool"}


@dataclass(frozen=True)
class ExposedInput:
    """One input a user may set: where it is in the graph, its type and what ``/workflow-info`` shows."""

    key: str  # "<node id>/<input name>"
    node_id: str
    input_name: str
    type: str  # "int" | "float" | "str" | "bool"
    title: str
    class_type: str
    default: Any
    description: str | None = None

    def info(self) -> dict[str, Any]:
        """The spec's per-input object: type, title, class, default (and an admin description if any)."""
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "class": self.class_type,
            "default": self.default,
        }
        if self.description:
            body["description"] = self.description
        return body

    def check(self, value: Any) -> None:
        """Refuse a value of the wrong JSON type; ranges and choices are left to graph validation."""
        if self.type == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.type == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif self.type == "bool":
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"{self.key}: expected {self.type}, got {type(value).__name__} {_short(value)}",
                field=self.key,
            )


@dataclass(frozen=True)
class Workflow:
    """A loaded alias: its file, its graph as written there, and its exposed inputs in admin order."""

    alias: str
    path: Path
    graph: Mapping[str, Any]
    inputs: Mapping[str, ExposedInput]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class WorkflowCatalog:
    """Aliases -> workflow graphs with exposed inputs; thread-safe, reloads changed files on use."""

    def __init__(
        self,
        folder: Path | str,
        alias_file: Path | str,
        registry: NodeRegistry,
        *,
        foreign_nodes: bool = False,
    ) -> None:
        self.folder = Path(folder).resolve()
        self.alias_file = Path(alias_file)
        self.registry = registry
        self.foreign_nodes = foreign_nodes
        self._lock = threading.Lock()
        self._workflows: dict[str, Workflow] = {}
        self._problems: dict[str, str] = {}
        self._watched: set[Path] = set()
        self._signature: tuple[Any, ...] | None = None
        with self._lock:
            self._reload(initial=True)

    # -- public API ---------------------------------------------------------------------------

    def aliases(self) -> list[str]:
        """The usable aliases in alias-file order (``GET /workflow-list``)."""
        with self._lock:
            self._refresh()
            return list(self._workflows)

    def problems(self) -> dict[str, str]:
        """Aliases left out at the last load, each with the reason."""
        with self._lock:
            self._refresh()
            return dict(self._problems)

    def get(self, alias: str) -> Workflow:
        """The loaded workflow, or INVALID_INPUT saying why there is none."""
        with self._lock:
            self._refresh()
            return self._get(alias)

    def info(self, alias: str) -> dict[str, dict[str, Any]]:
        """``GET /workflow-info``: per exposed input, ``{"type", "title", "class", "default"}``."""
        return {key: exposed.info() for key, exposed in self.get(alias).inputs.items()}

    def build(self, alias: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """The alias's graph with ``values`` set on its exposed inputs, validated, ready to queue.

        Every key must be an exposed input of that workflow (the door removes ``workflow`` first);
        inputs not given keep the workflow file's value. The built graph goes through
        ``parse_graph`` so an out-of-range number or an unknown file name is refused now, not when
        a backend gets to it.
        """
        workflow = self.get(alias)
        graph: dict[str, Any] = copy.deepcopy(dict(workflow.graph))
        for key, value in values.items():
            exposed = workflow.inputs.get(key)
            if exposed is None:
                listed = ", ".join(workflow.inputs) or "none"
                raise GenserveError(
                    ErrorCode.INVALID_INPUT,
                    f"{key}: not an input of workflow {alias!r} (its inputs: {listed})",
                    field=key,
                )
            exposed.check(value)
            graph[exposed.node_id]["inputs"][exposed.input_name] = value
        if not self._has_foreign_nodes(graph):
            try:
                parse_graph(graph, self.registry)
            except GraphValidationError as exc:
                raise GenserveError(
                    ErrorCode.INVALID_INPUT, f"workflow {alias!r}: {exc.message}", **exc.details
                ) from exc
        return graph

    # -- loading ------------------------------------------------------------------------------

    def _get(self, alias: str) -> Workflow:
        workflow = self._workflows.get(alias)
        if workflow is not None:
            return workflow
        if alias in self._problems:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"workflow {alias!r} is unavailable: {self._problems[alias]}",
                workflow=alias,
            )
        raise GenserveError(ErrorCode.INVALID_INPUT, f"unknown workflow {alias!r}", workflow=alias)

    def _refresh(self) -> None:
        if self._current_signature() != self._signature:
            self._reload(initial=False)

    def _current_signature(self) -> tuple[Any, ...]:
        """Modification time and size of the alias file and of every workflow file it named."""
        paths = [self.alias_file, *sorted(self._watched)]
        return tuple((str(p), *_stat(p)) for p in paths)

    def _reload(self, *, initial: bool) -> None:
        try:
            entries = self._read_alias_file()
        except GenserveError as exc:
            if initial:
                raise
            log.error("workflow alias file not reloaded, keeping the last good one: %s", exc.message)
            self._signature = self._current_signature()
            return
        workflows: dict[str, Workflow] = {}
        problems: dict[str, str] = {}
        watched: set[Path] = set()
        for alias, entry in entries.items():
            try:
                path = self._workflow_path(entry)
                watched.add(path)
                workflows[alias] = self._load_workflow(alias, path, entry)
            except GenserveError as exc:
                problems[alias] = exc.message
        for alias, reason in problems.items():
            if self._problems.get(alias) != reason:
                log.error("workflow %r left out: %s (workflows folder %s)", alias, reason, self.folder)
        self._workflows, self._problems, self._watched = workflows, problems, watched
        self._signature = self._current_signature()
        log.info("workflow catalog loaded: %d alias(es), %d left out", len(workflows), len(problems))

    def _read_alias_file(self) -> dict[str, Mapping[str, Any]]:
        path = self.alias_file
        if not path.exists():
            log.warning("workflow alias file %s does not exist; no workflows are served", path)
            return {}
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise GenserveError(
                ErrorCode.INVALID_INPUT, f"workflow alias file {path}: cannot read it: {exc}"
            ) from exc
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            raise GenserveError(
                ErrorCode.INVALID_INPUT, f"workflow alias file {path}: expected an object of aliases"
            )
        entries: dict[str, Mapping[str, Any]] = {}
        for alias, entry in data.items():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str):
                raise GenserveError(
                    ErrorCode.INVALID_INPUT,
                    f"workflow alias file {path}: alias {alias!r} needs an object with a string 'file'",
                )
            entries[str(alias)] = entry
        return entries

    def _workflow_path(self, entry: Mapping[str, Any]) -> Path:
        name = entry["file"]
        candidate = Path(name)
        if not name or "\x00" in name or candidate.is_absolute():
            raise GenserveError(ErrorCode.INVALID_INPUT, f"file {name!r} must be relative to the folder")
        resolved = (self.folder / candidate).resolve()
        if os.path.commonpath([str(resolved), str(self.folder)]) != str(self.folder):
            raise GenserveError(ErrorCode.INVALID_INPUT, f"file {name!r} leads out of the workflows folder")
        return resolved

    def _load_workflow(self, alias: str, path: Path, entry: Mapping[str, Any]) -> Workflow:
        shown = path.relative_to(self.folder).as_posix() if path.is_relative_to(self.folder) else path.name
        try:
            graph = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # an OSError's str() would name the absolute path
            why = f"is not JSON: {exc}" if isinstance(exc, ValueError) else f"cannot be read ({exc.strerror})"
            why = "does not exist" if isinstance(exc, FileNotFoundError) else why
            raise GenserveError(ErrorCode.INVALID_INPUT, f"workflow file {shown} {why}") from exc
        if is_ui_workflow(graph):  # "Save", not "Save (API)": converted as ComfyUI's frontend does
            graph = ui_to_api(graph, registry_object_info(self.registry), source=f"workflow file {shown}")
        if not isinstance(graph, dict) or not all(isinstance(n, Mapping) for n in graph.values()):
            raise GenserveError(ErrorCode.INVALID_INPUT, f"workflow file {shown} is not an API-format graph")
        graph = {str(k): v for k, v in graph.items()}
        if not self._has_foreign_nodes(graph):
            try:
                parse_graph(graph, self.registry)
            except GraphValidationError as exc:
                # A default not among a combo's current choices (an example image not uploaded on
                # this host, say) is left to build(): a request may supply its own file.
                if any(p.kind != "value_not_in_list" for p in exc.problems):
                    raise GenserveError(
                        ErrorCode.INVALID_INPUT, f"workflow file {shown}: {exc.message}"
                    ) from exc
                log.warning("workflow %r: defaults not available now: %s", alias, exc.message)
        inputs: dict[str, ExposedInput] = {}
        for key, override in _exposed_entries(entry):
            inputs[key] = self._exposed(graph, key, override)
        return Workflow(alias, path, graph, inputs)

    def _exposed(self, graph: Mapping[str, Any], key: str, override: Mapping[str, Any]) -> ExposedInput:
        node_id, sep, input_name = key.partition("/")
        if not sep or not node_id or not input_name:
            raise GenserveError(ErrorCode.INVALID_INPUT, f"exposed input {key!r} is not '<node>/<input>'")
        node = graph.get(node_id)
        if node is None:
            raise GenserveError(ErrorCode.INVALID_INPUT, f"exposed input {key!r}: no node {node_id}")
        class_type = str(node.get("class_type"))
        inputs = node.get("inputs") if isinstance(node.get("inputs"), Mapping) else {}
        if input_name not in inputs:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"exposed input {key!r}: node {node_id} ({class_type}) has no input {input_name!r}",
            )
        default = inputs[input_name]
        if is_link(default):
            raise GenserveError(
                ErrorCode.INVALID_INPUT, f"exposed input {key!r} is fed by a link, not a value a user can set"
            )
        node_type = self.registry.get(class_type)
        if node_type is not None:
            spec = node_type.input_spec(input_name)
            if spec is None or spec.type not in _TYPE_NAMES:
                raise GenserveError(
                    ErrorCode.INVALID_INPUT,
                    f"exposed input {key!r}: {class_type} has no value input {input_name!r}",
                )
            type_name = _TYPE_NAMES[spec.type]
            fallback_title = node_type.title
        else:  # foreign node (only reached with foreign_nodes=True): its value says its type
            type_name = _type_of(default, key)
            fallback_title = class_type
        meta = node.get("_meta")
        meta_title = meta.get("title") if isinstance(meta, Mapping) else None
        title = (
            override.get("title") or (meta_title if isinstance(meta_title, str) else None) or fallback_title
        )
        description = override.get("description")
        return ExposedInput(
            key=key,
            node_id=node_id,
            input_name=input_name,
            type=type_name,
            title=str(title),
            class_type=class_type,
            default=default,
            description=str(description) if description else None,
        )

    def _has_foreign_nodes(self, graph: Mapping[str, Any]) -> bool:
        """Whether validation is left to the backend: allowed foreign node types are present."""
        return self.foreign_nodes and any(
            isinstance(n, Mapping) and n.get("class_type") not in self.registry for n in graph.values()
        )


def _exposed_entries(entry: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    raw = entry.get("inputs", [])
    if isinstance(raw, Mapping):
        pairs = [(str(k), v if v is not None else {}) for k, v in raw.items()]
    elif isinstance(raw, list):
        pairs = [(str(k), {}) for k in raw]
    else:
        raise GenserveError(ErrorCode.INVALID_INPUT, "'inputs' must be a list or an object")
    for key, override in pairs:
        if not isinstance(override, Mapping):
            raise GenserveError(ErrorCode.INVALID_INPUT, f"exposed input {key!r}: override must be an object")
    return pairs


def _type_of(value: Any, key: str) -> str:
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")):
        if isinstance(value, kind):  # bool first: it is an int too
            return name
    raise GenserveError(
        ErrorCode.INVALID_INPUT, f"exposed input {key!r}: value {_short(value)} is not settable"
    )


def _stat(path: Path) -> tuple[int, int] | tuple[None, None]:
    try:
        st = path.stat()
    except OSError:
        return (None, None)
    return (st.st_mtime_ns, st.st_size)
