"""INT8 quantization on a tiny conv detector built here: outputs stay close to FP32, the report and the
choice follow the rules, and the CLI writes a model that loads."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edge_agent.cli import app
from edge_agent.config.detector import DetectorConfig
from edge_agent.detect.detector import load_detector
from edge_agent.lab.quantize import FORMATS, Trial, choose, prepare, quantize_model, quantize_one, tail_nodes

SIZE = 64


def tiny_detector(path, seed: int = 0, channels_last: bool = False, silu: bool = False, prescale: bool = False):
    """conv3x3+relu -> conv3x3 s2+relu -> conv1x1 (5 ch) -> reshape [1,5,N] -> sigmoid -> scale to pixels:
    the YOLOv8 layout with one class, like the bundled model's graph in miniature. channels_last: an NHWC
    input transposed first, as models converted from TensorFlow have it. silu: x * sigmoid(x) for relu, as
    PyTorch exports YOLOv5/v8's SiLU; prescale: a Mul by 1/255 on the input before anything else."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return numpy_helper.from_array((rng.normal(0, 0.4, shape)).astype(np.float32))

    inits = [w(8, 3, 3, 3), w(8), w(16, 8, 3, 3), w(16), w(5, 16, 1, 1), w(5)]
    for t, n in zip(inits, ["w1", "b1", "w2", "b2", "w3", "b3"], strict=True):
        t.name = n
    inits += [numpy_helper.from_array(np.array([1, 5, -1], np.int64), "shape"),
              numpy_helper.from_array(np.array([SIZE, SIZE, SIZE / 2, SIZE / 2, 1], np.float32).reshape(1, 5, 1),
                                      "scale")]
    image = "nchw" if channels_last else "images"
    nodes = [
        helper.make_node("Conv", [image, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"]),
        helper.make_node("Reshape", ["c3", "shape"], ["flat"]),
        helper.make_node("Sigmoid", ["flat"], ["sig"]),
        helper.make_node("Mul", ["sig", "scale"], ["output0"]),
    ]
    if channels_last:
        nodes.insert(0, helper.make_node("Transpose", ["scaled" if prescale else "images"], ["nchw"],
                                         perm=[0, 3, 1, 2]))
    if prescale:
        inits.append(numpy_helper.from_array(np.array(1.0, np.float32), "unit"))
        nodes.insert(0, helper.make_node("Mul", ["images", "unit"], ["scaled"]))
        if not channels_last:
            nodes[1].input[0] = "scaled"
    if silu:
        for i, node in enumerate(list(nodes)):
            if node.op_type == "Relu":
                x, y = node.input[0], node.output[0]
                at = nodes.index(node)
                nodes[at:at + 1] = [helper.make_node("Sigmoid", [x], [f"sg{i}"]),
                                    helper.make_node("Mul", [x, f"sg{i}"], [y])]
    dims = [1, SIZE, SIZE, 3] if channels_last else [1, 3, SIZE, SIZE]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, 1024])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="names", value="{0: 'pothole'}")
    onnx.save(model, str(path))
    return path


@pytest.fixture
def calib_dir(tmp_path):
    """Real-looking images: grey road texture with dark blobs, different in each."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(12):
        img = np.clip(rng.normal(120, 25, (96, 128, 3)), 0, 255).astype(np.uint8)
        cv2.circle(img, (int(rng.integers(20, 108)), int(rng.integers(20, 76))), int(rng.integers(5, 20)),
                   (30, 30, 35), -1)
        cv2.imwrite(str(folder / f"{i}.png"), img)
    return folder


def run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"images": x})[0]


@pytest.mark.parametrize("spec", FORMATS, ids=[f.name for f in FORMATS])
def test_quantized_outputs_stay_close_to_fp32(tmp_path, calib_dir, spec):
    src = tiny_detector(tmp_path / "fp32.onnx")
    pre, exclude = prepare(src, tmp_path, (SIZE, SIZE))
    assert {"Reshape_5", "Sigmoid_6", "Mul_7"} <= set(exclude)  # the decoding tail stays float
    out = quantize_one(pre, tmp_path / "int8.onnx", spec, sorted(calib_dir.iterdir()), (SIZE, SIZE), exclude)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ("QLinearConv" in ops) if spec.name.startswith("qoperator") else ("QuantizeLinear" in ops)
    img = cv2.resize(cv2.imread(str(calib_dir / "3.png")), (SIZE, SIZE))
    x = (img[..., ::-1].transpose(2, 0, 1)[None] / 255).astype(np.float32)
    ref, got = run(src, x), run(out, x)
    scores_ref, scores_got = ref[0, 4], got[0, 4]
    assert np.abs(scores_got - scores_ref).mean() < 0.03
    assert np.corrcoef(scores_ref, scores_got)[0, 1] > 0.95
    assert np.abs(got[0, :4] - ref[0, :4]).mean() < 0.03 * SIZE


def test_tail_detection_keeps_backbone_quantizable(tmp_path):
    model = onnx.load(str(tiny_detector(tmp_path / "m.onnx")))
    for i, n in enumerate(model.graph.node):
        n.name = f"{n.op_type}_{i}"
    assert tail_nodes(model) == ["Mul_7", "Reshape_5", "Sigmoid_6"]


@pytest.mark.parametrize(("silu", "channels_last", "prescale"), [(True, False, False), (False, True, True)],
                         ids=["silu", "nhwc-after-a-mul"])
def test_silu_and_late_layout_changes_do_not_keep_the_backbone_in_float(tmp_path, silu, channels_last, prescale):
    # Every YOLOv5/v8 export has a Sigmoid (SiLU) before nearly every Conv, and some NHWC models scale the input
    # before their Transpose: the tail started there and 65 of 66 Convs of such a model stayed float.
    src = tiny_detector(tmp_path / "m.onnx", silu=silu, channels_last=channels_last, prescale=prescale)
    pre, exclude = prepare(src, tmp_path, (SIZE, SIZE), channels_last=channels_last)
    model = onnx.load(str(pre))
    convs = {n.name for n in model.graph.node if n.op_type == "Conv"}
    assert len(convs) == 3 and not convs & set(exclude)
    assert {n.op_type for n in model.graph.node if n.name in exclude} >= {"Reshape", "Sigmoid"}  # the decoding


def test_nhwc_model_quantizes_its_backbone_and_calibrates_on_nhwc_images(tmp_path, calib_dir):
    src = tiny_detector(tmp_path / "nhwc.onnx", channels_last=True)
    pre, exclude = prepare(src, tmp_path, (SIZE, SIZE), channels_last=True)
    model = onnx.load(str(pre))
    convs = {n.name for n in model.graph.node if n.op_type == "Conv"}
    assert len(convs) == 3 and not convs & set(exclude)  # the leading Transpose is layout, not decoding
    spec = next(f for f in FORMATS if f.name == "qdq-u8s8-perchannel")
    out = quantize_one(pre, tmp_path / "int8.onnx", spec, sorted(calib_dir.iterdir()), (SIZE, SIZE), exclude,
                       channels_last=True)
    img = cv2.resize(cv2.imread(str(calib_dir / "3.png")), (SIZE, SIZE))
    x = (img[..., ::-1][None] / 255).astype(np.float32)
    ref, got = run(src, x), run(out, x)
    assert np.corrcoef(ref[0, 4], got[0, 4])[0, 1] > 0.95
    report = quantize_model(src, tmp_path / "chosen.onnx", calib_dir, runs=3, max_ap_drop=1.0, threads=1)
    assert all(t.ap50 is not None for t in report.trials), [t.note for t in report.trials]
    assert load_detector(DetectorConfig(model=report.output)).info.input_layout == "NHWC"


def test_a_result_without_int8_operators_is_refused(tmp_path, calib_dir):
    src = tiny_detector(tmp_path / "fp32.onnx")
    pre, _ = prepare(src, tmp_path, (SIZE, SIZE))
    everything = [n.name for n in onnx.load(str(pre)).graph.node]
    with pytest.raises(RuntimeError, match="nothing was quantized"):
        quantize_one(pre, tmp_path / "int8.onnx", FORMATS[0], sorted(calib_dir.iterdir()), (SIZE, SIZE), everything)


def test_choice_rules():
    fp32 = Trial("fp32", 0.60, 10.0)
    trials = [Trial("a", 0.595, 6.0, accepted=True), Trial("b", 0.60, 7.0, accepted=True),
              Trial("c", 0.50, 3.0, accepted=False)]
    chosen, reason = choose(fp32, trials, 0.01)
    assert chosen == "a" and "6.0 ms vs FP32 10.0 ms" in reason
    slow = [Trial("a", 0.60, 12.0, accepted=True)]
    assert choose(fp32, slow, 0.01)[0] == "fp32"
    assert "not 1.05x faster" in choose(fp32, slow, 0.01)[1]
    assert choose(fp32, [Trial("a", 0.60, 9.9, accepted=True)], 0.01)[0] == "fp32"  # 1.01x: timing noise
    assert "within 1 AP50 point" in choose(fp32, [Trial("c", 0.3, 2.0)], 0.01)[1]


def test_quantize_cli_reports_every_format_and_writes_a_loadable_model(tmp_path, calib_dir):
    src = tiny_detector(tmp_path / "fp32.onnx")
    dst = tmp_path / "out" / "model.onnx"
    res = CliRunner().invoke(app, ["model", "quantize", str(src), str(dst), "--calib", str(calib_dir), "--json",
                                   "--runs", "5", "--max-ap-drop", "1.0", "--threads", "1"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert [t["format"] for t in report["trials"]] == [f.name for f in FORMATS]
    assert "FP32 detections" in report["accuracy_source"]  # no labels: FP32's detections are the reference
    for t in report["trials"]:
        assert t["ap50"] is not None and t["latency_ms"] > 0
    assert report["chosen"] in {"fp32", *(f.name for f in FORMATS)}
    # The file written is the chosen model: FP32's own outputs, or quantized ones that stay close to them.
    img = cv2.resize(cv2.imread(str(calib_dir / "3.png")), (SIZE, SIZE))
    x = (img[..., ::-1].transpose(2, 0, 1)[None] / 255).astype(np.float32)
    ref, got = run(src, x), run(dst, x)
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    if report["chosen"] == "fp32":
        assert np.array_equal(got, ref) and not ops & {"QuantizeLinear", "QLinearConv"}
    else:
        assert ops & {"QuantizeLinear", "QLinearConv"}, ops
        assert np.abs(got[0, 4] - ref[0, 4]).mean() < 0.03
    info = CliRunner().invoke(app, ["model", "info", "--model", str(dst), "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout.strip().splitlines()[-1])["classes"] == ["pothole"]
    bench = CliRunner().invoke(app, ["model", "bench", "--model", str(dst), "--fp32", str(src), "--runs", "3",
                                     "--json", "--threads", "1"])
    assert bench.exit_code == 0, bench.output
    timed = json.loads(bench.stdout.strip().splitlines()[-1])
    assert timed["fp32"]["median_ms"] > 0
    if report["chosen"] != "fp32":
        assert timed["speedup_vs_fp32"] > 0 and timed["model"]["path"] == str(dst)


def test_quantize_cli_without_images_fails_clearly(tmp_path):
    src = tiny_detector(tmp_path / "fp32.onnx")
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["model", "quantize", str(src), str(tmp_path / "o.onnx"), "--calib",
                                   str(tmp_path / "empty")])
    assert res.exit_code == 2 and "no calibration images" in res.output


def test_quantize_cli_refuses_what_it_cannot_quantize_in_one_line(tmp_path, calib_dir):
    # Each was a traceback (a file that is no model) or "no INT8 format stayed within 1 AP50 point" after
    # every format failed on the input type, with the float16 model then copied out as "FP32".
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    model = onnx.load(str(tiny_detector(tmp_path / "f.onnx")))
    model.graph.node.insert(0, helper.make_node("Cast", ["images16"], ["images"], to=TensorProto.FLOAT))
    model.graph.input[0].name = "images16"
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.save(model, str(tmp_path / "fp16-input.onnx"))
    for src, says in ((junk, "junk.onnx"), (tmp_path / "fp16-input.onnx", "takes float16")):
        res = CliRunner().invoke(app, ["model", "quantize", str(src), str(tmp_path / "o.onnx"), "--calib",
                                       str(calib_dir)])
        assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "o.onnx").exists()
