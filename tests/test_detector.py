"""Detector runtime: layout decoding from tiny ONNX models with known outputs, NMS, letterbox, load checks."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent.config.detector import DetectorConfig
from edge_agent.detect.decode import Layout, LayoutError, anchor_count, detect_layout
from edge_agent.detect.detector import ModelError, load_detector
from edge_agent.detect.letterbox import letterbox, to_blob
from edge_agent.detect.manifest import parse_names
from edge_agent.detect.nms import nms
from roadmon_contract.digest import sha256_file


def constant_model(path, output: np.ndarray, *, size: int = 320, names: str | None = None,
                   input_type: int = TensorProto.FLOAT, input_rank: int = 4, meta: dict | None = None,
                   input_shape: list | None = None):
    """An ONNX model whose output is `output` whatever the image (the input only feeds a x0 term)."""
    shape = [1, 3, size, size][:input_rank] if input_rank <= 4 else [1, 1, 3, size, size]
    shape = input_shape or shape
    inp = helper.make_tensor_value_info("images", input_type, shape)
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["const", "z"], ["output0"]),
    ]
    inits = [numpy_helper.from_array(output.astype(np.float32), "const"),
             numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    graph = helper.make_graph(nodes, "const", [inp], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    props = dict(meta or {})
    if names is not None:
        props["names"] = names
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def v8_output(size: int = 320, nc: int = 2) -> np.ndarray:
    n = anchor_count(size, size)
    out = np.zeros((1, 4 + nc, n), np.float32)
    out[0, :4, :] = 10.0  # every other location: a tiny box with score 0
    # (cx, cy, w, h, class scores...)
    rows = [
        (100, 100, 40, 20, 0.9, 0.0),   # A: class 0
        (100, 100, 40, 20, 0.0, 0.8),   # B: same place, class 1: class-aware NMS keeps it
        (102, 101, 40, 20, 0.7, 0.0),   # C: overlaps A in class 0: suppressed
        (250, 200, 30, 30, 0.5, 0.0),   # D: separate
        (250, 300, 30, 30, 0.2, 0.0),   # E: below threshold
    ]
    for i, r in enumerate(rows):
        out[0, :, i] = r[: 4 + nc]
    return out


def test_yolov8_layout_decodes_maps_back_and_is_class_aware(tmp_path):
    path = constant_model(tmp_path / "v8.onnx", v8_output(), names="{0: 'pothole', 1: 'crack'}")
    det = load_detector(DetectorConfig(model=str(path), score_threshold=0.3))
    assert det.info.layout == "yolov8"
    assert det.info.classes == ("pothole", "crack")
    assert det.info.input_size == (320, 320)
    # 640x480 frame -> scale 0.5, 40 px of padding top and bottom in the 320x320 input.
    found = det.detect(np.zeros((480, 640, 3), np.uint8))
    got = [(d.class_name, round(d.score, 2), round(d.x1), round(d.y1), round(d.x2), round(d.y2)) for d in found]
    assert got == [
        ("pothole", 0.9, 160, 100, 240, 140),
        ("crack", 0.8, 160, 100, 240, 140),
        ("pothole", 0.5, 470, 290, 530, 350),
    ]


def test_yolov5_layout_multiplies_objectness(tmp_path):
    n = 3 * anchor_count(320, 320)
    out = np.zeros((1, n, 6), np.float32)
    out[0, :, :4] = 10.0
    out[0, 0] = (160, 160, 64, 32, 0.8, 0.5)    # score 0.4
    out[0, 1] = (40, 40, 20, 20, 0.9, 0.9)      # score 0.81
    out[0, 2] = (200, 40, 20, 20, 0.5, 0.5)     # score 0.25: below 0.3
    path = constant_model(tmp_path / "v5.onnx", out, names="{0: 'pothole'}")
    det = load_detector(DetectorConfig(model=str(path), score_threshold=0.3))
    assert det.info.layout == "yolov5"
    found = det.detect(np.zeros((320, 320, 3), np.uint8))
    assert [(round(d.score, 2), round(d.x1), round(d.y1)) for d in found] == [(0.81, 30, 30), (0.4, 128, 144)]


def test_end2end_layout_skips_nms(tmp_path):
    out = np.zeros((1, 300, 6), np.float32)
    out[0, 0] = (10, 20, 110, 70, 0.95, 1)
    out[0, 1] = (12, 20, 110, 70, 0.85, 1)   # heavy overlap, same class: an NMS-free model meant it
    out[0, 2] = (200, 200, 300, 300, 0.6, 0)
    path = constant_model(tmp_path / "e2e.onnx", out, names="{0: 'pothole', 1: 'crack'}")
    det = load_detector(DetectorConfig(model=str(path), score_threshold=0.5))
    assert (det.info.layout, det.info.box_units) == ("end2end", "pixels")  # 297 zero rows do not make fractions
    found = det.detect(np.zeros((320, 320, 3), np.uint8))
    assert [(d.class_name, round(d.score, 2), round(d.x2)) for d in found] == [
        ("crack", 0.95, 110), ("crack", 0.85, 110), ("pothole", 0.6, 300)]


def test_an_end2end_model_that_finds_nothing_is_not_refused_as_nan(tmp_path, caplog):
    # NMS inside the model: no row above its own threshold on the probe images is "nothing", not NaN scores
    # (it was refused as "outputs NaN/inf scores"); it loads, and the log says its scores went unchecked.
    path = constant_model(tmp_path / "e2e-empty.onnx", np.zeros((1, 0, 6), np.float32),
                          names="{0: 'pothole', 1: 'crack'}", meta={"end2end": "True"})
    det = load_detector(DetectorConfig(model=str(path)))
    assert det.detect(np.zeros((320, 320, 3), np.uint8)) == []
    assert any("could not be checked" in r.getMessage() for r in caplog.records)


def test_end2end_class_ids_outside_the_names_are_dropped_with_one_warning(tmp_path, caplog):
    out = np.zeros((1, 300, 6), np.float32)
    out[0, 0] = (10, 20, 110, 70, 0.95, 7)
    out[0, 1] = (12, 20, 110, 70, 0.85, -1)
    out[0, 2] = (200, 200, 300, 300, 0.6, 0)
    path = constant_model(tmp_path / "e2e.onnx", out, names="{0: 'pothole', 1: 'crack'}")
    det = load_detector(DetectorConfig(model=str(path), score_threshold=0.5))
    for _ in range(3):
        assert [d.class_name for d in det.detect(np.zeros((320, 320, 3), np.uint8))] == ["pothole"]
    said = [r.getMessage() for r in caplog.records if "outside its 2 class names" in r.getMessage()]
    assert len(said) == 2 and "class id 7" in said[0] and "class id -1" in said[1]  # once per id, not per frame


def test_an_end2end_model_without_names_is_refused_until_named(tmp_path):
    # Its class ids are numbers in each row: the count was guessed from a test image (1 + the largest id seen),
    # so a 2-class model whose test image showed only class 0 loaded as 1 class and dropped every crack box.
    out = np.zeros((1, 300, 6), np.float32)
    out[0, 0] = (10, 20, 110, 70, 0.95, 0)
    path = constant_model(tmp_path / "e2e.onnx", out)
    with pytest.raises(ModelError, match=r"names no classes.*how many it has is unknown.*--names"):
        load_detector(DetectorConfig(model=str(path)))
    det = load_detector(DetectorConfig(model=str(path), class_names=["pothole", "crack"]))
    assert det.info.classes == ("pothole", "crack")
    unread = constant_model(tmp_path / "e2e-csv.onnx", out, names="pothole,crack")
    with pytest.raises(ModelError, match="its 'names' metadata 'pothole,crack' is not a list"):
        load_detector(DetectorConfig(model=str(unread)))


def test_names_metadata_that_cannot_be_read_is_named_in_the_warning(tmp_path, caplog):
    # "no 'names' in its ONNX metadata" was said of a model whose names were there in another format.
    path = constant_model(tmp_path / "v8.onnx", v8_output(), names="pothole,crack")
    det = load_detector(DetectorConfig(model=str(path)))
    assert det.info.classes == ("0", "1")
    assert any("its 'names' metadata 'pothole,crack' is not a list" in r.getMessage() for r in caplog.records)


def test_the_detections_output_is_found_behind_mask_prototypes(tmp_path):
    # A segmentation-style export with its mask prototypes (rank 4) as the first output was refused as
    # "output shape [1, 32, 96, 160] is not [1, A, B]": only the first output was ever read.
    path = constant_model(tmp_path / "v8.onnx", v8_output(), names="{0: 'pothole', 1: 'crack'}")
    model = onnx.load(str(path))
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.zeros((1, 32, 8, 8), np.float32), "protos_const"))
    graph.node.append(helper.make_node("Identity", ["protos_const"], ["protos"]))
    graph.output.insert(0, helper.make_tensor_value_info("protos", TensorProto.FLOAT, [1, 32, 8, 8]))
    onnx.save(model, str(path))
    det = load_detector(DetectorConfig(model=str(path), score_threshold=0.3))
    assert det.info.layout == "yolov8"
    assert [d.class_name for d in det.detect(np.zeros((320, 320, 3), np.uint8))] == ["pothole", "crack", "pothole"]


def test_layout_recognition_rules():
    assert detect_layout((1, 84, 8400), 80, (640, 640)) is Layout.YOLOV8
    assert detect_layout((1, 25200, 85), 80, (640, 640)) is Layout.YOLOV5
    assert detect_layout((1, 25200, 6), 1, (640, 640)) is Layout.YOLOV5
    assert detect_layout((1, 300, 6), 80, (640, 640)) is Layout.END2END
    # 600x400 is no multiple of 32: padded stride-2 convs round each level up (75x50 + 38x25 + 19x13 = 4947),
    # unpadded ones down; a one-class v5 head of either kind is no end-to-end one.
    assert detect_layout((1, 3 * 4947, 6), 1, (600, 400)) is Layout.YOLOV5
    assert detect_layout((1, 3 * anchor_count(600, 400, round_up=False), 6), 1, (600, 400)) is Layout.YOLOV5
    with pytest.raises(LayoutError, match="3 class names"):
        detect_layout((1, 6, 8400), 3, (640, 640))
    with pytest.raises(LayoutError):
        detect_layout((1, 84), None, (640, 640))


def test_names_from_manifest_and_ultralytics_metadata(tmp_path):
    assert parse_names("{0: 'pothole', 1: 'alligator crack'}") == ["pothole", "alligator crack"]
    assert parse_names('["a", "b"]') == ["a", "b"]
    assert parse_names("{1: 'x'}") is None  # ids must be 0..n-1
    path = constant_model(tmp_path / "m.onnx", v8_output())
    (tmp_path / "m.manifest.json").write_text(json.dumps({"name": "mine", "version": "7",
                                                          "classes": ["p", "c"], "sha256": sha256_file(path)}))
    det = load_detector(DetectorConfig(model=str(path)))
    assert (det.info.name, det.info.version, det.info.classes) == ("mine", "7", ("p", "c"))


def test_manifest_sha256_mismatch_is_refused(tmp_path):
    path = constant_model(tmp_path / "m.onnx", v8_output(), names="{0: 'a', 1: 'b'}")
    (tmp_path / "m.manifest.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_detector(DetectorConfig(model=str(path)))


def test_non_model_file_and_missing_file_are_refused(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model")
    with pytest.raises(ModelError, match="could not be loaded as an ONNX model"):
        load_detector(DetectorConfig(model=str(bad)))
    with pytest.raises(ModelError, match="not found"):
        load_detector(DetectorConfig(model=str(tmp_path / "nope.onnx")))


def test_wrong_input_rank_is_refused(tmp_path):
    path = constant_model(tmp_path / "r3.onnx", v8_output(), input_rank=3, names="{0: 'a', 1: 'b'}")
    with pytest.raises(ModelError, match="rank 3"):
        load_detector(DetectorConfig(model=str(path)))


def test_degenerate_outputs_are_refused_unless_check_disabled(tmp_path):
    out = v8_output()
    out[0, 4:, :] = 0.0  # every score zero: what a broken INT8 export produces
    path = constant_model(tmp_path / "dead.onnx", out, names="{0: 'a', 1: 'b'}")
    with pytest.raises(ModelError, match="degenerate"):
        load_detector(DetectorConfig(model=str(path)))
    det = load_detector(DetectorConfig(model=str(path), sanity_check=False))
    assert det.detect(np.zeros((100, 100, 3), np.uint8)) == []


def test_uint8_input_and_provider_fallback(tmp_path):
    path = constant_model(tmp_path / "u8.onnx", v8_output(), input_type=TensorProto.UINT8, names="{0: 'a', 1: 'b'}")
    cfg = DetectorConfig(model=str(path), providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    det = load_detector(cfg)
    assert det.info.input_dtype == "uint8"
    assert det.info.provider == "CPUExecutionProvider"  # nothing else is installed here; CPU is the last resort
    assert len(det.detect(np.full((240, 320, 3), 90, np.uint8))) == 3


def test_nms_is_class_aware_and_sorted():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    keep = nms(boxes, np.array([0.5, 0.9, 0.7, 0.1]), np.array([0, 0, 1, 0]), 0.5)
    assert keep.tolist() == [1, 2, 3]
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).tolist() == []


@pytest.mark.parametrize("frame_shape", [(480, 640), (720, 1280), (300, 200), (320, 320)])
def test_letterbox_round_trip(frame_shape):
    h, w = frame_shape
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    canvas, lb = letterbox(frame, 320, 320)
    assert canvas.shape == (320, 320, 3)
    xy = rng.uniform(0, 1, (20, 2)) * [w, h]
    boxes = np.concatenate([xy, xy + rng.uniform(1, 50, (20, 2))], 1).clip(0, [w, h, w, h])
    np.testing.assert_allclose(lb.to_frame(lb.to_input(boxes)), boxes, atol=1e-3)
    # The frame's centre pixel lands at the canvas centre (padding is split evenly).
    cx, cy = lb.to_input(np.array([[w / 2, h / 2, w / 2, h / 2]]))[0, :2]
    assert abs(cx - 160) <= 1 and abs(cy - 160) <= 1
    blob = to_blob(canvas, np.float32)
    assert blob.shape == (1, 3, 320, 320) and blob.max() <= 1.0
    assert blob[0, 0, 160, 160] == pytest.approx(canvas[160, 160, 2] / 255)  # channel 0 is red


def test_bundled_resolves_to_models_bundled():
    from edge_agent.detect.manifest import REPO_ROOT, resolve_model_path

    if not (REPO_ROOT / "models" / "bundled" / "model.onnx").exists():
        with pytest.raises(ModelError, match="bundled model is not installed"):
            resolve_model_path("bundled")
    else:
        assert resolve_model_path("bundled") == REPO_ROOT / "models" / "bundled" / "model.onnx"


def test_preprocessor_reuses_buffers_and_matches_letterbox():
    from edge_agent.detect.letterbox import Preprocessor

    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.uint8):
        pre = Preprocessor(320, 320, dtype)
        # A change of frame size repaints the padding: no stale pixels from a frame of another aspect ratio.
        for shape in [(360, 640), (480, 360), (360, 640), (320, 320)]:
            frame = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
            canvas, lb = letterbox(frame, 320, 320)
            blob, placement = pre(frame)
            assert placement == lb
            assert blob is pre.blob and blob.dtype == dtype
            np.testing.assert_array_equal(blob, to_blob(canvas, dtype))


def colour_model(path, *, channels_last: bool, size: int | str = 320):
    """A YOLOv8-layout model with classes 'red', 'green', 'blue', each scored by the mean of that input channel,
    and one fixed box at every location: which class wins shows which channel the detector fed where."""
    n = anchor_count(320, 320)
    dims = [1, size, size, 3] if channels_last else [1, 3, size, size]
    boxes = np.tile(np.array([40, 40, 32, 32], np.float32)[None, :, None], (1, 1, n))
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["means"], axes=[1, 2] if channels_last else [2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["means", "last"], ["column"]),
        helper.make_node("Mul", ["column", "ones"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1),
    ]
    inits = [numpy_helper.from_array(boxes, "boxes"), numpy_helper.from_array(np.ones((1, 3, n), np.float32), "ones"),
             numpy_helper.from_array(np.array([2], np.int64), "last")]
    graph = helper.make_graph(nodes, "colour", [helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 7, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="names", value="['red', 'green', 'blue']")
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_input_layout_is_read_and_fed_rgb(tmp_path, channels_last):
    det = load_detector(DetectorConfig(model=str(colour_model(tmp_path / "c.onnx", channels_last=channels_last))))
    assert det.info.input_layout == ("NHWC" if channels_last else "NCHW")
    assert det.info.input_size == (320, 320)
    for bgr, name in (((0, 0, 255), "red"), ((255, 0, 0), "blue"), ((0, 255, 0), "green")):
        found = det.detect(np.full((320, 320, 3), bgr, np.uint8))
        assert [(d.class_name, round(d.score, 3)) for d in found] == [(name, 1.0)]


def test_nhwc_input_with_a_dynamic_size(tmp_path):
    path = colour_model(tmp_path / "c.onnx", channels_last=True, size="s")
    det = load_detector(DetectorConfig(model=str(path), input_size=96))
    assert (det.info.input_layout, det.info.input_size) == ("NHWC", (96, 96))
    assert det.detect(np.full((96, 96, 3), (0, 0, 255), np.uint8))[0].class_name == "red"


def test_nhwc_static_input_is_no_longer_read_as_256_channels(tmp_path):
    out = v8_output(256)
    path = constant_model(tmp_path / "tf.onnx", out, input_shape=[1, 256, 256, 3], names="{0: 'a', 1: 'b'}")
    det = load_detector(DetectorConfig(model=str(path)))
    assert (det.info.input_layout, det.info.input_size) == ("NHWC", (256, 256))


def test_input_neither_nchw_nor_nhwc_is_refused_naming_its_shape(tmp_path):
    path = constant_model(tmp_path / "rgba.onnx", v8_output(), input_shape=[1, 4, 320, 320], names="{0: 'a', 1: 'b'}")
    with pytest.raises(ModelError, match=r"shape \[1, 4, 320, 320\], neither NCHW \[1, 3, H, W\] nor NHWC"):
        load_detector(DetectorConfig(model=str(path)))


PIXEL_DETECTIONS = [("pothole", 0.9, 160, 100, 240, 140), ("crack", 0.8, 160, 100, 240, 140),
                    ("pothole", 0.5, 470, 290, 530, 350)]  # test_yolov8_layout_decodes_maps_back_and_is_class_aware


def test_boxes_as_fractions_of_the_input_are_scaled_to_pixels(tmp_path):
    out = v8_output()
    out[0, :4] /= 320  # what a TensorFlow/TFLite export gives
    out[0, :4, -10:] = np.array([1.5, 0.5, 0.6, 0.4])[:, None]  # junk locations reaching past the image, score 0
    path = constant_model(tmp_path / "frac.onnx", out, names="{0: 'pothole', 1: 'crack'}")
    det = load_detector(DetectorConfig(model=str(path), score_threshold=0.3))
    assert det.info.box_units == "fractions"
    found = det.detect(np.zeros((480, 640, 3), np.uint8))
    got = [(d.class_name, round(d.score, 2), round(d.x1), round(d.y1), round(d.x2), round(d.y2)) for d in found]
    assert got == PIXEL_DETECTIONS
    # Configured units are taken as they are: read as pixels, these boxes are sub-pixel specks.
    as_pixels = load_detector(DetectorConfig(model=str(path), score_threshold=0.3, box_units="pixels"))
    assert as_pixels.info.box_units == "pixels"
    assert all(d.x2 - d.x1 < 1 for d in as_pixels.detect(np.zeros((480, 640, 3), np.uint8)))


def test_end2end_fraction_boxes_and_pixel_models_keep_their_units(tmp_path):
    out = np.zeros((1, 300, 6), np.float32)
    out[0, 0] = (10 / 320, 20 / 320, 110 / 320, 70 / 320, 0.95, 1)
    path = constant_model(tmp_path / "e2e.onnx", out, names="{0: 'pothole', 1: 'crack'}")
    det = load_detector(DetectorConfig(model=str(path)))
    assert det.info.box_units == "fractions"
    assert [(round(d.x1), round(d.y1), round(d.x2), round(d.y2)) for d in det.detect(np.zeros((320, 320, 3),
                                                                                              np.uint8))] == [
        (10, 20, 110, 70)]
    pixels = load_detector(DetectorConfig(model=str(constant_model(tmp_path / "px.onnx", v8_output(),
                                                                   names="{0: 'a', 1: 'b'}"))))
    assert pixels.info.box_units == "pixels"


def test_a_boxes_only_output_is_refused_naming_the_problem(tmp_path):
    path = constant_model(tmp_path / "ssd.onnx", np.full((1, 100, 4), 0.5, np.float32))
    with pytest.raises(ModelError, match="holds boxes only, the class scores are in another output"):
        load_detector(DetectorConfig(model=str(path)))


def test_a_model_without_names_warns_and_takes_names_from_the_config(tmp_path, caplog):
    path = constant_model(tmp_path / "anon.onnx", v8_output())
    with caplog.at_level("WARNING", logger="edge_agent.detect.detector"):
        assert load_detector(DetectorConfig(model=str(path))).info.classes == ("0", "1")
    assert "names no classes" in caplog.text and "--names" in caplog.text and "detector.class_names" in caplog.text
    named = load_detector(DetectorConfig(model=str(path), class_names=["pothole", "crack"]))
    assert named.info.classes == ("pothole", "crack")
    with pytest.raises(ModelError, match="has 2 classes, but there are 3 class names"):
        load_detector(DetectorConfig(model=str(path), class_names=["a", "b", "c"]))


def test_a_real_network_converted_tensorflow_style_gives_the_same_detections(tmp_path):
    """The bundled network behind an NHWC input and with fraction boxes (tests/onnx_models.tensorflow_style):
    its output, once the detector has scaled it, and its detections are the original's."""
    from edge_agent.detect.detector import sample_road_image
    from edge_agent.detect.manifest import bundled_model_path
    from tests.onnx_models import tensorflow_style

    try:
        src = bundled_model_path()
    except ModelError as exc:
        pytest.skip(f"needs the bundled model: {exc}")
    ref = load_detector(DetectorConfig(model=str(src), score_threshold=0.01))
    if ref.info.layout != "yolov8":
        pytest.skip(f"the twin is built for a yolov8-layout model; the bundled one is {ref.info.layout}")
    twin_path = tensorflow_style(src, tmp_path / "tf.onnx", ref.info.input_size, len(ref.info.classes))
    twin = load_detector(DetectorConfig(model=str(twin_path), score_threshold=0.01,
                                        class_names=list(ref.info.classes)))
    assert (twin.info.input_layout, twin.info.box_units, twin.info.input_size) == ("NHWC", "fractions",
                                                                                   ref.info.input_size)
    for frame in (sample_road_image(1280, 720), sample_road_image(640, 640, seed=3)):
        np.testing.assert_allclose(twin.infer(frame)[0], ref.infer(frame)[0], rtol=1e-4, atol=1e-3)
        want, got = ref.detect(frame), twin.detect(frame)
        assert want and [d.class_name for d in got] == [d.class_name for d in want]
        np.testing.assert_allclose([(d.score, d.x1, d.y1, d.x2, d.y2) for d in got],
                                   [(d.score, d.x1, d.y1, d.x2, d.y2) for d in want], atol=1e-2)


def test_a_model_onnx_runtime_cannot_run_is_refused_with_its_cause(tmp_path, caplog):
    # An opset newer than the runtime: the cause ("under development" / "not supported") came after 300
    # characters of C++ signature and was cut off, behind a warning that the only provider "failed".
    path = constant_model(tmp_path / "new-opset.onnx", np.zeros((1, 300, 6), np.float32), names="{0: 'pothole'}")
    model = onnx.load(str(path))
    model.opset_import[0].version = 99
    onnx.save(model, str(path))
    with pytest.raises(ModelError) as refused:
        load_detector(DetectorConfig(model=str(path)))
    assert "under development" in str(refused.value).split("…")[-1], str(refused.value)
    assert not [r for r in caplog.records if "trying the next one" in r.getMessage()]


def test_the_agent_keeps_onnx_runtime_from_phoning_home(tmp_path):
    """ONNX Runtime 1.29+ keeps a device id under ~/.cache and uploads usage telemetry to Microsoft unless
    ORT_DISABLE_TELEMETRY is set when it starts; the agent's package sets it. A session opened in a fresh
    process with its own home leaves nothing there."""
    import os
    import subprocess
    import sys

    model = tmp_path / "tiny.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"} | {"HOME": str(home)}
    env.pop("XDG_CACHE_HOME", None)
    code = ("import sys; from pathlib import Path; from edge_agent.detect.session import open_session; "
            "open_session(Path(sys.argv[1]), ['CPUExecutionProvider'])")
    subprocess.run([sys.executable, "-c", code, str(model)], env=env, check=True, timeout=60)
    assert list(home.rglob("*")) == []
