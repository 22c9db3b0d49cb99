"""Node input declarations: widgets (values typed in the graph) and links (outputs of other nodes).

An input is declared once and serves three readers: ``/object_info`` (ComfyUI's
``["INT", {"default": 0, "min": 0}]`` shape, so ComfyUI clients can draw and fill it), graph
validation (a widget value is coerced and range-checked before anything runs) and link checking
(an upstream output type must match the input's type). Problems carry ComfyUI's error type names
(``value_smaller_than_min``...), so the ComfyUI-compatible door can answer ``node_errors`` as
ComfyUI does. A dynamic combo (ComfyUI's V3 ``COMFY_DYNAMICCOMBO_V3``) is a combo whose chosen
option brings inputs of its own, given in a prompt as ``"<combo>.<input>"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", DYNAMIC_COMBO})
ANY_TYPE = "*"

Choices = Sequence[str] | Callable[[], Sequence[str]]


class InputValueError(ValueError):
    """A widget value that cannot be used; ``kind`` is ComfyUI's error type for it."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class InputSpec:
    """One declared input. ``type`` is a widget type (INT, FLOAT, STRING, BOOLEAN, COMBO) or a link type.

    Combo choices may be a callable so that lists that change at run time (model files in a
    folder, uploaded images) are read fresh by every validation and every ``/object_info``.
    """

    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    multiline: bool = False
    choices: Choices | None = None
    tooltip: str = ""
    # More ``/object_info`` options as ComfyUI's frontend reads them (``image_upload``,
    # ``control_after_generate``), as pairs so the spec stays hashable.
    extra: tuple[tuple[str, Any], ...] = ()
    # A dynamic combo's options, each with the inputs choosing it adds.
    options: tuple[ComboOption, ...] = ()

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES

    def choice_list(self) -> list[str]:
        if self.choices is None:
            return []
        return list(self.choices() if callable(self.choices) else self.choices)

    def chosen_inputs(self, value: Any) -> tuple[tuple[str, InputSpec], ...]:
        """The inputs a dynamic combo's chosen option adds (required, then optional); none for
        another input, a value that is no option's key or a link."""
        for option in self.options:
            if option.key == value:
                return (*option.required, *option.optional)
        return ()

    def _among_choices(self, value: str) -> bool:
        """Listed, or accepted unlisted by choices that have an ``accepts`` (private files)."""
        accepts = getattr(self.choices, "accepts", None)
        return value in self.choice_list() or (callable(accepts) and bool(accepts(value)))

    def _not_a_choice(self, value: Any) -> str:
        """Fixed choices are listed; choices that say ``where`` they come from (a folder other clients
        write into) are not, so a refusal does not show anyone else's file names."""
        where = getattr(self.choices, "where", None)
        if isinstance(where, str):
            return f"{_show(value)} is not in {where}"
        choices = self.choice_list()
        listed = ", ".join(choices[:20]) + (", ..." if len(choices) > 20 else "")
        return f"{_show(value)} is not one of: {listed}"

    def to_object_info(self) -> list[Any]:
        """ComfyUI's ``[type, options]`` pair; a combo's type is its list of choices."""
        options: dict[str, Any] = {}
        if self.default is not None:
            options["default"] = self.default
        for key in ("min", "max", "step"):
            value = getattr(self, key)
            if value is not None:
                options[key] = value
        if self.multiline:
            options["multiline"] = True
        if self.tooltip:
            options["tooltip"] = self.tooltip
        if self.options:
            options["options"] = [option.to_object_info() for option in self.options]
        options.update(self.extra)
        head: Any = self.choice_list() if self.type == "COMBO" else self.type
        return [head, options] if options else [head]

    def coerce(self, value: Any) -> Any:
        """The widget value in its declared Python type, or InputValueError saying what is wrong."""
        if self.type == "INT":
            number: float = _as_int(value)
        elif self.type == "FLOAT":
            number = _as_float(value)
        elif self.type == "BOOLEAN":
            return _as_bool(value)
        elif self.type == "STRING":
            if not isinstance(value, str):
                raise InputValueError("invalid_input_type", f"expected a string, got {_show(value)}")
            return value
        elif self.type in ("COMBO", DYNAMIC_COMBO):
            if not isinstance(value, str) or not self._among_choices(value):
                raise InputValueError("value_not_in_list", self._not_a_choice(value))
            return value
        else:
            raise InputValueError("invalid_input_type", f"a {self.type} input takes a link, not a value")
        if self.min is not None and number < self.min:
            raise InputValueError(
                "value_smaller_than_min", f"{number} is smaller than the minimum {self.min}"
            )
        if self.max is not None and number > self.max:
            raise InputValueError("value_bigger_than_max", f"{number} is bigger than the maximum {self.max}")
        return number


@dataclass(frozen=True)
class ComboOption:
    """One choice of a dynamic combo and the inputs choosing it adds (ComfyUI's ``DynamicCombo.Option``).

    In an API prompt those inputs sit beside the combo as ``"<combo>.<input>"`` keys, as ComfyUI's
    frontend sends them; the inputs of the options not chosen are not read.
    """

    key: str
    required: tuple[tuple[str, InputSpec], ...] = ()
    optional: tuple[tuple[str, InputSpec], ...] = ()

    def to_object_info(self) -> dict[str, Any]:
        inputs: dict[str, Any] = {"required": {name: spec.to_object_info() for name, spec in self.required}}
        if self.optional:
            inputs["optional"] = {name: spec.to_object_info() for name, spec in self.optional}
        return {"key": self.key, "inputs": inputs}


def accepts(input_type: str, output_type: str) -> bool:
    """Whether an output of ``output_type`` may feed an input of ``input_type``.

    ``*`` matches anything, and either side may be a comma-separated union (``IMAGE,MASK``), as in
    ComfyUI. A combo input takes a link from an output declared ``COMBO``.
    """
    if ANY_TYPE in (input_type, output_type):
        return True
    wanted = {part.strip() for part in input_type.split(",")}
    given = {part.strip() for part in output_type.split(",")}
    return bool(wanted & given)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_int(value: Any) -> int:
    # bool is an int subclass; True for a seed is a mistake, not a 1.
    if isinstance(value, bool):
        raise InputValueError("invalid_input_type", f"expected an integer, got {_show(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InputValueError("invalid_input_type", f"expected an integer, got {_show(value)}")


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise InputValueError("invalid_input_type", f"expected a number, got {_show(value)}")
    number: float | None = None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise InputValueError("invalid_input_type", f"expected a finite number, got {_show(value)}")
    return number


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InputValueError("invalid_input_type", f"expected true or false, got {_show(value)}")


def Int(
    default: int = 0,
    *,
    min: int | None = None,
    max: int | None = None,
    step: int | None = None,
    tooltip: str = "",
) -> InputSpec:
    """An integer widget (seeds, steps, sizes)."""
    return InputSpec("INT", default=default, min=min, max=max, step=step, tooltip=tooltip)


def Float(
    default: float = 0.0,
    *,
    min: float | None = None,
    max: float | None = None,
    step: float | None = None,
    tooltip: str = "",
) -> InputSpec:
    """A number widget (cfg, denoise, strengths)."""
    return InputSpec("FLOAT", default=default, min=min, max=max, step=step, tooltip=tooltip)


def String(default: str = "", *, multiline: bool = False, tooltip: str = "") -> InputSpec:
    """A text widget (prompts are multiline)."""
    return InputSpec("STRING", default=default, multiline=multiline, tooltip=tooltip)


def Boolean(default: bool = False, *, tooltip: str = "") -> InputSpec:
    """A toggle widget."""
    return InputSpec("BOOLEAN", default=default, tooltip=tooltip)


def Combo(choices: Choices, *, default: str | None = None, tooltip: str = "") -> InputSpec:
    """A pick-one widget; ``choices`` may be a callable read at every use (files in a folder)."""
    return InputSpec("COMBO", default=default, choices=choices, tooltip=tooltip)


def Option(
    key: str,
    required: Mapping[str, InputSpec] | None = None,
    optional: Mapping[str, InputSpec] | None = None,
) -> ComboOption:
    """A dynamic combo's option and the inputs it adds."""
    return ComboOption(key, tuple((required or {}).items()), tuple((optional or {}).items()))


def DynamicCombo(options: Sequence[ComboOption], *, tooltip: str = "") -> InputSpec:
    """A pick-one widget whose chosen option adds its own inputs (ComfyUI's V3 ``DynamicCombo``).

    ComfyUI draws no default for it: the first option is the one a new node shows.
    """
    keys = tuple(option.key for option in options)
    return InputSpec(DYNAMIC_COMBO, choices=keys, options=tuple(options), tooltip=tooltip)


def Linked(type_name: str, *, tooltip: str = "") -> InputSpec:
    """An input fed by another node's output (MODEL, CLIP, VAE, CONDITIONING, LATENT, IMAGE, MASK, ``*``)."""
    return InputSpec(type_name, tooltip=tooltip)


def with_options(spec: InputSpec, **options: Any) -> InputSpec:
    """``spec`` with more ``/object_info`` options (``image_upload=True``...)."""
    return replace(spec, extra=(*spec.extra, *options.items()))
