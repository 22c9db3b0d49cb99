"""Small UI-format graphs for the conversion tests, and the node types they use as ComfyUI's
``/object_info`` entries (the converter's only knowledge of a type)."""

from __future__ import annotations

from typing import Any

LINK_TYPES = ("MODEL", "LATENT", "IMAGE")


def _info(required: dict[str, Any], optional: dict[str, Any] | None = None, name: str = "") -> dict[str, Any]:
    inputs: dict[str, Any] = {"required": required}
    order = {"required": list(required)}
    if optional:
        inputs["optional"] = optional
        order["optional"] = list(optional)
    return {"input": inputs, "input_order": order, "display_name": name}


OBJECT_INFO: dict[str, dict[str, Any]] = {
    "Loader": _info({"ckpt": [["a.safetensors", "b.safetensors"]]}, name="Load Model"),
    "Sampler": _info(
        {
            "model": ["MODEL"],
            "seed": ["INT", {"default": 0}],
            "steps": ["INT", {"default": 20}],
            "cfg": ["FLOAT", {"default": 7.0}],
            "latent": ["LATENT"],
        },
        name="Sampler",
    ),
    "Empty": _info({"width": ["INT", {"default": 512}], "height": ["INT", {"default": 512}]}),
    "Decode": _info({"samples": ["LATENT"], "model": ["MODEL"]}),
    "Save": _info({"images": ["IMAGE"], "prefix": ["STRING", {"default": "out"}]}, name="Save Image"),
    "LoadImage": _info({"image": [["x.png", "y.png"], {"image_upload": True}]}),
    "Noise": _info({"noise_seed": ["INT", {}], "strength": ["FLOAT", {"control_after_generate": False}]}),
    "FixedSeed": _info({"seed": ["INT", {"control_after_generate": False}], "n": ["INT", {}]}),
    "Picker": _info({"choice": [["p", "q"], {"control_after_generate": True}], "k": ["INT", {}]}),
    "Forced": _info({"text": ["STRING", {"forceInput": True}], "n": ["INT", {}]}),
    "Generate": _info(  # a V3 dynamic combo: the chosen option's widgets follow it, dotted
        {
            "mode": [
                "COMFY_DYNAMICCOMBO_V3",
                {
                    "options": [
                        {
                            "key": "on",
                            "inputs": {"required": {"temperature": ["FLOAT", {}], "seed": ["INT", {}]}},
                        },
                        {"key": "off", "inputs": {}},
                    ]
                },
            ],
            "thinking": ["BOOLEAN", {"default": False}],
        }
    ),
}


def object_info(name: str) -> dict[str, Any] | None:
    return OBJECT_INFO.get(name)


def node(
    node_id: int,
    kind: str,
    values: Any = None,
    inputs: list[tuple[str, str, int | None]] = (),  # type: ignore[assignment]
    outputs: list[tuple[str, list[int]]] = (),  # type: ignore[assignment]
    mode: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """A UI node; an input named like a widget gets the frontend's ``widget`` marker."""
    slots = []
    for name, type_name, link in inputs:
        slot: dict[str, Any] = {"name": name, "type": type_name, "link": link}
        if type_name not in LINK_TYPES and type_name not in ("*", "CLIP"):
            slot["widget"] = {"name": name}
        slots.append(slot)
    return {
        "id": node_id,
        "type": kind,
        "mode": mode,
        "inputs": slots,
        "outputs": [{"name": n, "type": n, "links": links} for n, links in outputs],
        "widgets_values": values,
        **extra,
    }


def workflow(nodes: list[dict[str, Any]], links: list[list[Any]], **extra: Any) -> dict[str, Any]:
    return {"version": 0.4, "nodes": nodes, "links": links, "groups": [], "extra": {}, **extra}


def chain(middle_mode: int = 0) -> dict[str, Any]:
    """Loader -> Sampler <- Empty; Sampler -> Decode -> Save."""
    return workflow(
        [
            node(1, "Loader", ["b.safetensors"], outputs=[("MODEL", [1, 4])]),
            node(2, "Empty", [640, 480], outputs=[("LATENT", [2])]),
            node(
                3,
                "Sampler",
                [42, "randomize", 8, 2.5],
                inputs=[("model", "MODEL", 1), ("latent", "LATENT", 2)],
                outputs=[("LATENT", [3])],
                mode=middle_mode,
            ),
            node(
                4,
                "Decode",
                [],
                inputs=[("samples", "LATENT", 3), ("model", "MODEL", 4)],
                outputs=[("IMAGE", [5])],
            ),
            node(5, "Save", ["cat"], inputs=[("images", "IMAGE", 5)], title="Final"),
            node(6, "MarkdownNote", ["# read me"]),
            node(7, "Note", ["note"]),
        ],
        [
            [1, 1, 0, 3, 0, "MODEL"],
            [2, 2, 0, 3, 1, "LATENT"],
            [3, 3, 0, 4, 0, "LATENT"],
            [4, 1, 0, 4, 1, "MODEL"],
            [5, 4, 0, 5, 0, "IMAGE"],
        ],
    )
