"""A lip-sync generator whose inference costs what a real one does, for ``lipsync.py --generator unet``.

The demo graph (``genserve.models.lipsync_demo``) is one 1x1 convolution: cheap enough that its
inference is a few percent of a frame's server time, so no batching policy can show in the
throughput. This one has the same interface (``input [B,6,320,320]`` + ``audio [B,32,16,16]`` ->
``output [B,3,320,320]`` in 0..1, dynamic batch) and the shape of the generators the spec's
server hosts: a strided 3x3 convolution encoder to 20x20, the audio features resized and joined
at the bottleneck, and a decoder that upsamples back with a skip connection at each scale. Its
cost grows with the square of ``width`` (the first layer's channels): about 1.5 GFLOP a frame at
16. Weights are random (He-scaled, so activations stay in range); only the cost is realistic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from genserve.models.demo.lipsync import AUDIO_SHAPE, IMAGE_SIZE, IR_VERSION, MODEL_FILE, OPSET


class _Graph:
    """Nodes and initializers appended in order, with generated tensor names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def conv(self, x: str, cin: int, cout: int, *, stride: int = 1, act: str = "Relu") -> str:
        weight, bias, pre, out = (self._name(s) for s in ("w", "b", "conv", act.lower()))
        scale = (2.0 / (cin * 9)) ** 0.5
        kernel = (self.rng.standard_normal((cout, cin, 3, 3)) * scale).astype(np.float32)
        self.weights.append(numpy_helper.from_array(kernel, weight))
        self.weights.append(numpy_helper.from_array(np.zeros(cout, np.float32), bias))
        self.nodes.append(
            helper.make_node("Conv", [x, weight, bias], [pre], pads=[1, 1, 1, 1], strides=[stride, stride])
        )
        self.nodes.append(helper.make_node(act, [pre], [out]))
        return out

    def resize(self, x: str, scale: float) -> str:
        scales, out = self._name("scales"), self._name("resized")
        self.weights.append(numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), scales))
        self.nodes.append(helper.make_node("Resize", [x, "", scales], [out], mode="nearest"))
        return out

    def concat(self, *xs: str) -> str:
        out = self._name("concat")
        self.nodes.append(helper.make_node("Concat", list(xs), [out], axis=1))
        return out


def unet_generator(width: int = 16, seed: int = 0) -> onnx.ModelProto:
    """The graph described above; ``width`` channels at 160x160, 8x ``width`` at the bottleneck."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    g, c = _Graph(seed), width
    e1 = g.conv("input", 6, c, stride=2)  # 160
    e2 = g.conv(e1, c, 2 * c, stride=2)  # 80
    e3 = g.conv(e2, 2 * c, 4 * c, stride=2)  # 40
    e4 = g.conv(e3, 4 * c, 8 * c, stride=2)  # 20
    heard = g.resize(g.conv("audio", AUDIO_SHAPE[0], 8 * c), 20 / AUDIO_SHAPE[1])  # 16 -> 20
    mid = g.conv(g.concat(e4, heard), 16 * c, 8 * c)
    d3 = g.conv(g.concat(g.resize(mid, 2), e3), 12 * c, 4 * c)  # 40
    d2 = g.conv(g.concat(g.resize(d3, 2), e2), 6 * c, 2 * c)  # 80
    d1 = g.conv(g.concat(g.resize(d2, 2), e1), 3 * c, c)  # 160
    out = g.conv(g.resize(d1, 2), c, 3, act="Sigmoid")  # 320
    g.nodes.append(helper.make_node("Identity", [out], ["output"]))
    graph = helper.make_graph(
        g.nodes,
        "genserve_lipsync_unet_benchmark",
        inputs=[
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 6, IMAGE_SIZE, IMAGE_SIZE]),
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", *AUDIO_SHAPE]),
        ],
        outputs=[
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])
        ],
        initializer=g.weights,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="genserve-bench")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def install_unet(model_folder: Path, width: int = 16) -> None:
    """Replace the demo model's generator in ``model_folder``; frames, boxes and audio encoder stay."""
    onnx.save_model(unet_generator(width), Path(model_folder) / MODEL_FILE)
