"""Tiny real ONNX detectors built in tests (no trained weights needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_detector(score: float = 0.6, size: int = 64, version: str = "1") -> bytes:
    """A real YOLOv8-layout ONNX detector: [1,3,S,S] -> [1,5,A], one class 'pothole', a fixed box per anchor
    scored SCORE (0 gives the degenerate model the detector's load check refuses)."""
    anchors = sum((size // s) ** 2 for s in (8, 16, 32))
    const = np.zeros((1, 5, anchors), np.float32)
    const[0, :4] = np.array([size / 2, size / 2, size / 4, size / 4], np.float32)[:, None]
    const[0, 4] = score
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, anchors])
    nodes = [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),  # ties the output to the input
             helper.make_node("Mul", ["m", "zero"], ["z"]),
             helper.make_node("Add", ["c", "z"], ["output0"])]
    inits = [numpy_helper.from_array(const, "c"), numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {"names": "{0: 'pothole'}", "imgsz": f"[{size}, {size}]", "version": version})
    return model.SerializeToString()


def tensorflow_style(src: Path, dst: Path, size: int | tuple[int, int], num_classes: int) -> Path:
    """The network of a YOLOv8-layout model at SIZE px (or (width, height)) as a TensorFlow/TFLite conversion
    has it: an NHWC input [1, H, W, 3] (transposed first thing in the graph) and the output's boxes as fractions
    of the input."""
    width, height = (size, size) if isinstance(size, int) else size
    model = onnx.load(str(src))
    graph = model.graph
    inp, out = graph.input[0], graph.output[0]
    nchw, in_pixels = f"{inp.name}_nchw", f"{out.name}_pixels"
    for node in graph.node:
        node.input[:] = [nchw if name == inp.name else name for name in node.input]
        node.output[:] = [in_pixels if name == out.name else name for name in node.output]
    scale = np.ones((1, 4 + num_classes, 1), np.float32)
    scale[0, :4, 0] = [1 / width, 1 / height, 1 / width, 1 / height]  # cx, cy, w, h
    graph.initializer.append(numpy_helper.from_array(scale, "to_fractions"))
    graph.node.insert(0, helper.make_node("Transpose", [inp.name], [nchw], perm=[0, 3, 1, 2]))
    graph.node.append(helper.make_node("Mul", [in_pixels, "to_fractions"], [out.name]))
    nhwc = helper.make_tensor_value_info(inp.name, inp.type.tensor_type.elem_type, [1, height, width, 3])
    graph.input.remove(inp)
    graph.input.insert(0, nhwc)
    onnx.save(model, str(dst))
    return dst
