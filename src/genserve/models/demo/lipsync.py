"""A tiny lip-sync model set in the real formats, so the lip-sync server works on a fresh machine.

Real lip-sync weights cannot be downloaded here. These files have exactly the real interface
(ONNX graphs with the real input/output names, shapes and dynamic batch; PNG background frames;
``crop_rects.json``), so the code that serves them serves a real exported model unchanged. The
graphs are written with ``onnx.helper`` rather than exported from torch: small, fast to build,
and deterministic byte for byte for a given seed.

The lip-sync graph is deliberately cheap but honest about its dependencies: every output pixel
depends on that item's image (a 1x1 convolution) and on that item's audio (a per-channel offset
from the pooled audio features), and on nothing from other batch items, so batching requests
together cannot change any result.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MODEL_FILE = "model.onnx"
AUDIO_ENCODER_FILE = "audio_encoder.onnx"
FRAMES_DIR = "frames"
CROP_RECTS_FILE = "crop_rects.json"

# onnxruntime runs opset 17 on every provider; IR 8 is the version that opset was released with.
OPSET = 17
IR_VERSION = 8
IMAGE_SIZE = 320
AUDIO_SHAPE = (32, 16, 16)
MEL_SHAPE = (1, 80, 16)
EMBED_DIM = 512
FACE_BOX = 180  # side of the demo face box, in pixels


def build_lipsync_demo(
    folder: Path, *, seed: int = 0, frames: int = 12, width: int = 640, height: int = 360
) -> None:
    """Write model.onnx, audio_encoder.onnx, frames/frame_NNNN.png and crop_rects.json into ``folder``."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if width < FACE_BOX + 20 or height < FACE_BOX + 20:
        raise ValueError(f"frames of {width}x{height} are too small for a {FACE_BOX} px face box")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    onnx.save_model(_lipsync_graph(rng), folder / MODEL_FILE)
    onnx.save_model(_audio_encoder_graph(rng), folder / AUDIO_ENCODER_FILE)
    boxes = _crop_boxes(rng, frames, width, height)
    _write_frames(folder / FRAMES_DIR, rng, boxes, width, height)
    (folder / CROP_RECTS_FILE).write_text(json.dumps(boxes) + "\n")


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="genserve-demo"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _weights(rng: np.random.Generator, name: str, shape: tuple[int, ...], scale: float) -> TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _lipsync_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """input [B,6,320,320] + audio [B,32,16,16] -> output [B,3,320,320] in 0..1 (Sigmoid).

    output = sigmoid(conv1x1(input) + conv1x1(mean_hw(audio))): the image sets the picture, the
    audio shifts each colour channel, so different audio visibly changes the frames.
    """
    initializers = [
        _weights(rng, "image_weight", (3, 6, 1, 1), 0.8),
        _weights(rng, "image_bias", (3,), 0.2),
        # Encoder vectors are tanh outputs; their spatial means are small, so the audio weights
        # are large enough for a change of audio to move the output by several grey levels.
        _weights(rng, "audio_weight", (3, AUDIO_SHAPE[0], 1, 1), 2.0),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "image_weight", "image_bias"], ["image_term"]),
        helper.make_node("ReduceMean", ["audio"], ["audio_pooled"], axes=[2, 3], keepdims=1),
        helper.make_node("Conv", ["audio_pooled", "audio_weight"], ["audio_term"]),
        helper.make_node("Add", ["image_term", "audio_term"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "genserve_lipsync_demo",
        inputs=[
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 6, IMAGE_SIZE, IMAGE_SIZE]),
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", *AUDIO_SHAPE]),
        ],
        outputs=[
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])
        ],
        initializer=initializers,
    )
    return _finish(graph)


def _audio_encoder_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """mel [N,1,80,16] -> embedding [N,512]: Flatten, a 1280x512 projection, Tanh.

    The weight scale keeps the tanh mostly out of saturation for mel values in [-4, 4], so
    different sounds give different vectors.
    """
    inputs = int(np.prod(MEL_SHAPE))
    initializers = [
        _weights(rng, "projection", (inputs, EMBED_DIM), 0.25 / np.sqrt(inputs)),
        _weights(rng, "projection_bias", (EMBED_DIM,), 0.1),
    ]
    nodes = [
        helper.make_node("Flatten", ["mel"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "projection"], ["projected"]),
        helper.make_node("Add", ["projected", "projection_bias"], ["biased"]),
        helper.make_node("Tanh", ["biased"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "genserve_audio_encoder_demo",
        inputs=[helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", *MEL_SHAPE])],
        outputs=[helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBED_DIM])],
        initializer=initializers,
    )
    return _finish(graph)


def _crop_boxes(rng: np.random.Generator, frames: int, width: int, height: int) -> list[list[int]]:
    """One face-sized box per frame near the centre, drifting a few pixels as a real head does."""
    centre_x, centre_y = width // 2, height // 2
    drift = rng.integers(-6, 7, size=(frames, 2))
    boxes = []
    for dx, dy in drift:
        x1 = int(np.clip(centre_x - FACE_BOX // 2 + dx, 0, width - FACE_BOX))
        y1 = int(np.clip(centre_y - FACE_BOX // 2 + dy, 0, height - FACE_BOX))
        boxes.append([x1, y1, x1 + FACE_BOX, y1 + FACE_BOX])
    return boxes


def _write_frames(
    directory: Path, rng: np.random.Generator, boxes: list[list[int]], width: int, height: int
) -> None:
    """Distinct backgrounds: a seeded colour gradient, a disc that moves per frame, a face in the box.

    Stale ``frame_*.png`` files from an earlier build with more frames are removed, because the
    server counts the frames in the folder.
    """
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {f"frame_{i:04d}.png" for i in range(len(boxes))}
    for stale in directory.glob("frame_*.png"):
        if stale.name not in wanted:
            stale.unlink()
    start, end = rng.integers(30, 226, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    shade = np.linspace(0.8, 1.0, height, dtype=np.float32)[:, None, None]
    gradient = ((start + (end - start) * ramp) * shade).astype(np.uint8)
    disc_colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    face_colour = tuple(int(c) for c in rng.integers(120, 230, size=3))
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        image = gradient.copy()
        phase = 2 * np.pi * i / len(boxes)
        disc = (int(width * (0.5 + 0.4 * np.cos(phase))), int(height * (0.5 + 0.35 * np.sin(phase))))
        cv2.circle(image, disc, 28, disc_colour, thickness=-1, lineType=cv2.LINE_AA)
        centre = ((x1 + x2) // 2, (y1 + y2) // 2)
        cv2.ellipse(image, centre, ((x2 - x1) * 2 // 5, (y2 - y1) // 2), 0, 0, 360, face_colour, -1)
        cv2.imwrite(str(directory / f"frame_{i:04d}.png"), image)
