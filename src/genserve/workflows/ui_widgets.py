"""The widget values of a UI-format node, by input name, read as ComfyUI's frontend reads them.

A UI node keeps ``widgets_values`` as a list in widget order; the names come from the node type's
``/object_info`` (inputs in ``input_order``, required then optional). The frontend keeps values it
never sends beside some widgets: ``control_after_generate`` after an INT named ``seed`` or
``noise_seed`` (or any widget whose options ask for it) and the ``upload`` button of an input with
``image_upload``; those positions are skipped. A V3 dynamic combo's chosen option adds its own
widgets right after it, named ``"<combo>.<input>"``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

_SCALAR_WIDGETS = {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}
_DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
_UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
_SEED_NAMES = ("seed", "noise_seed")


def widget_values(info: Mapping[str, Any] | None, raw: Any, sockets: Collection[str] = ()) -> dict[str, Any]:
    """A node's ``widgets_values`` by input name, the frontend's way.

    Values are positional over the node type's widget inputs (required, then optional, in
    ``input_order``), skipping the extra values that are not sent; a missing value takes the
    input's default, as a freshly drawn widget would. A dict (some custom nodes) is by name.
    ``sockets`` are inputs the saved node shows as plain sockets (no ``widget`` marker): the
    ComfyUI that saved it declared them link-only, so they hold no value here either.
    """
    if info is None:
        return dict(raw) if isinstance(raw, Mapping) else {}
    out: dict[str, Any] = {}
    by_name = raw if isinstance(raw, Mapping) else None
    values = raw if isinstance(raw, list) else []
    position = 0

    def take(name: str | None, default: Any) -> Any:
        nonlocal position
        if by_name is not None:
            return by_name.get(name, default) if name is not None else default
        value = values[position] if position < len(values) else default
        position += 1
        return value

    inputs = info.get("input") if isinstance(info.get("input"), Mapping) else {}
    required = _ordered(inputs.get("required"), info.get("input_order", {}).get("required"))
    optional = _ordered(inputs.get("optional"), info.get("input_order", {}).get("optional"))
    for name, spec in required:
        if name not in sockets:
            _widget(name, spec, take, out)
    for _ in range(sum(1 for _, spec in required if _upload_widget(spec))):
        take(None, "image")  # the upload button: kept in widgets_values, never sent
    for name, spec in optional:
        if name not in sockets:
            _widget(name, spec, take, out)
    return out


def _ordered(specs: Any, order: Any) -> list[tuple[str, Any]]:
    if not isinstance(specs, Mapping):
        return []
    names = [n for n in order if n in specs] if isinstance(order, list) else []
    names += [n for n in specs if n not in names]
    return [(n, specs[n]) for n in names]


def _options(spec: Any) -> Mapping[str, Any]:
    if isinstance(spec, list | tuple) and len(spec) > 1 and isinstance(spec[1], Mapping):
        return spec[1]
    return {}


def _upload_widget(spec: Any) -> bool:
    return any(_options(spec).get(key) for key in _UPLOAD_OPTIONS)


def _widget(name: str, spec: Any, take: Callable[[str | None, Any], Any], out: dict[str, Any]) -> None:
    """Read one widget's value (and the hidden values after it) into ``out[name]``."""
    if not isinstance(spec, list | tuple) or not spec:
        return
    head, options = spec[0], _options(spec)
    if options.get("forceInput"):
        return
    if isinstance(head, list) or head == "COMBO":
        choices = head if isinstance(head, list) else list(options.get("options", []))
        out[name] = take(name, options.get("default", choices[0] if choices else None))
        if options.get("control_after_generate"):
            take(None, "fixed")
    elif head in _SCALAR_WIDGETS:
        out[name] = take(name, options.get("default", _SCALAR_WIDGETS[head]))
        # Nested names ("sampling_mode.seed") are not matched by name, as in the frontend.
        wants = options.get("control_after_generate", name in _SEED_NAMES)
        if head == "INT" and wants:
            take(None, "fixed")
    elif head == _DYNAMIC_COMBO:
        choices = [o for o in options.get("options", []) if isinstance(o, Mapping)]
        default = options.get("default", choices[0].get("key") if choices else None)
        chosen = take(name, default)
        out[name] = chosen
        for option in choices:
            if option.get("key") == chosen:
                sub = option.get("inputs") if isinstance(option.get("inputs"), Mapping) else {}
                for part in ("required", "optional"):
                    for sub_name, sub_spec in _ordered(sub.get(part), None):
                        _widget(f"{name}.{sub_name}", sub_spec, take, out)
