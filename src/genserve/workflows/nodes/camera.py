"""CameraAngle: ComfyUI's camera-angle picker, as the multi-angle Qwen-Image-Edit template uses it.

The node is arithmetic on three widgets: it names the shot in plain English for a text prompt
(``"front-left quarter view elevated shot medium shot"``) and places a camera on an orbit around
a unit cube for 3D nodes (``camera_info``, ComfyUI's LOAD3D_CAMERA dict). The 3D preview is the
frontend's own widget (``view``, drawn by the official frontend from ``widgetType``); the server
never reads it, nor the optional ``image`` that preview shows, so nothing here needs a renderer.
Angles, buckets and the orbit are ComfyUI's, so the same widgets give the same prompt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from genserve.workflows.inputs import Float, Int, Linked, String, with_options
from genserve.workflows.nodes.base import NodeContext, NodeType

# The preview's scene, shared with the frontend (extensions/core/cameraAngle): a unit cube
# standing on the ground plane, the camera orbiting its centre.
SUBJECT_CENTER = (0.0, 0.5, 0.0)
CAMERA_FOV = 35.0
MIN_DISTANCE, MAX_DISTANCE = 3.2, 6.0
HORIZONTAL_MIN, HORIZONTAL_MAX = 0, 360
VERTICAL_MIN, VERTICAL_MAX = -30, 60
ZOOM_MIN, ZOOM_MAX = 0.0, 10.0

# Eight 45-degree sectors, the front one centred on 0.
HORIZONTAL_TERMS = (
    "front view",
    "front-right quarter view",
    "right side view",
    "back-right quarter view",
    "back view",
    "back-left quarter view",
    "left side view",
    "front-left quarter view",
)
# (upper bound, exclusive; None for the rest, term)
VERTICAL_TERMS = (
    (-15.0, "low-angle shot"),
    (15.0, "eye-level shot"),
    (45.0, "elevated shot"),
    (None, "high-angle shot"),
)
DISTANCE_TERMS = ((2.0, "wide shot"), (6.0, "medium shot"), (None, "close-up"))


def _bucket(value: float, terms: Sequence[tuple[float | None, str]]) -> str:
    for upper, term in terms:
        if upper is None or value < upper:
            return term
    return terms[-1][1]


def describe_camera_angle(horizontal_angle: float, vertical_angle: float, zoom: float) -> str:
    """The shot in words: azimuth sector, elevation band, distance band."""
    sector = int(((horizontal_angle % 360) + 22.5) // 45) % len(HORIZONTAL_TERMS)
    return " ".join(
        (HORIZONTAL_TERMS[sector], _bucket(vertical_angle, VERTICAL_TERMS), _bucket(zoom, DISTANCE_TERMS))
    )


def camera_info(horizontal_angle: float, vertical_angle: float, zoom: float) -> dict[str, Any]:
    """A perspective camera on the orbit, nearer the subject as ``zoom`` grows, looking at its centre."""
    yaw, pitch = math.radians(horizontal_angle), math.radians(vertical_angle)
    distance = MAX_DISTANCE - (MAX_DISTANCE - MIN_DISTANCE) * (zoom / ZOOM_MAX)
    cx, cy, cz = SUBJECT_CENTER
    return {
        "position": {
            "x": cx + distance * math.cos(pitch) * math.sin(yaw),
            "y": cy + distance * math.sin(pitch),
            "z": cz + distance * math.cos(pitch) * math.cos(yaw),
        },
        "target": {"x": cx, "y": cy, "z": cz},
        "zoom": 1.0,
        "cameraType": "perspective",
        "fov": CAMERA_FOV,
    }


def _camera_angle(
    ctx: NodeContext,
    horizontal_angle: int,
    vertical_angle: int,
    zoom: float,
    image: torch.Tensor | None = None,
    view: str = "",
) -> tuple[dict[str, Any], str]:
    # Linked values skip widget range checks; ComfyUI clamps them the same way.
    horizontal = max(HORIZONTAL_MIN, min(HORIZONTAL_MAX, int(horizontal_angle)))
    vertical = max(VERTICAL_MIN, min(VERTICAL_MAX, int(vertical_angle)))
    distance = max(ZOOM_MIN, min(ZOOM_MAX, float(zoom)))
    return camera_info(horizontal, vertical, distance), describe_camera_angle(horizontal, vertical, distance)


def camera_node_types() -> list[NodeType]:
    return [
        NodeType(
            "CameraAngle",
            _camera_angle,
            required={
                "horizontal_angle": Int(
                    0,
                    min=HORIZONTAL_MIN,
                    max=HORIZONTAL_MAX,
                    step=1,
                    tooltip="Azimuth around the subject in degrees. 0 is the front, 90 the right side, "
                    "180 the back.",
                ),
                "vertical_angle": Int(
                    0,
                    min=VERTICAL_MIN,
                    max=VERTICAL_MAX,
                    step=1,
                    tooltip="Elevation in degrees. Negative looks up from below, positive looks down "
                    "from above.",
                ),
                "zoom": Float(
                    5.0,
                    min=ZOOM_MIN,
                    max=ZOOM_MAX,
                    step=0.1,
                    tooltip="How close the camera is: 0 is a wide shot, 10 a close-up.",
                ),
            },
            optional={
                "image": Linked(
                    "IMAGE",
                    tooltip="Optional reference image shown on the front of the subject cube in the "
                    "3D preview.",
                ),
                "view": with_options(String(""), socketless=True, widgetType="CAMERA_ANGLE_VIEW"),
            },
            return_types=("LOAD3D_CAMERA", "STRING"),
            return_names=("camera_info", "prompt"),
            display_name="Camera Angle",
            category="3d",
            description="Pick a camera angle around a subject with a 3D preview. Outputs a camera_info "
            "for 3D nodes and a plain-English shot description for prompts.",
        ),
    ]
