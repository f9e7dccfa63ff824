"""The bundled model's training code: the loss falls when fitting one image, and the export is a YOLOv8-layout
ONNX with class names that the runtime loads at any input size. Skipped where torch (the train extra) is absent."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is in the train extra (make model installs it); make test does not")

from edge_agent.config.detector import DetectorConfig  # noqa: E402  (after the torch skip)
from edge_agent.detect.detector import load_detector  # noqa: E402
from models.assign import assign, detection_loss  # noqa: E402
from models.export import export_onnx  # noqa: E402
from models.net import PotholeNet  # noqa: E402

MODELS = Path(__file__).resolve().parent.parent / "models"


def one_image(size: int = 96):
    img = np.full((size, size, 3), 120, np.uint8)
    cv2.ellipse(img, (50, 55), (25, 12), 0, 0, 360, (30, 30, 35), -1)
    x = torch.from_numpy(img[..., ::-1].transpose(2, 0, 1).copy()).float()[None] / 255
    return x, [(torch.tensor([[25.0, 43.0, 75.0, 67.0]]), torch.tensor([0]))]


def test_assignment_picks_locations_inside_the_box():
    pts = torch.tensor([[4.0, 4.0], [50.0, 50.0], [60.0, 55.0], [200.0, 200.0]])
    scores = torch.full((4, 1), 0.5)
    boxes = torch.tensor([[0, 0, 8, 8], [40, 40, 70, 70], [45, 45, 75, 65], [190, 190, 210, 210]]).float()
    ts, tb, fg = assign(scores, boxes, pts, torch.tensor([[40.0, 40.0, 75.0, 68.0]]), torch.tensor([0]), topk=10)
    assert fg.tolist() == [False, True, True, False]
    assert torch.all(tb[fg] == torch.tensor([40.0, 40.0, 75.0, 68.0]))
    assert 0 < ts[fg].max() <= 1 and ts[~fg].sum() == 0


def test_loss_falls_when_fitting_one_image():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a shared box: two threads stall whenever another job takes a core
    net = PotholeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    x, targets = one_image()
    losses = []
    for _ in range(25):
        loss, _ = detection_loss(*net(x), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])


def test_export_is_a_dynamic_yolov8_layout_with_names(tmp_path):
    torch.manual_seed(0)
    net = PotholeNet()
    ckpt = tmp_path / "w.pt"
    torch.save({"ema": net.state_dict(), "classes": ["pothole"], "size": 320}, ckpt)
    path = export_onnx(ckpt, tmp_path / "m.onnx", version="t")
    det = load_detector(DetectorConfig(model=str(path)))
    assert (det.info.layout, det.info.classes, det.info.input_size) == ("yolov8", ("pothole",), (320, 320))
    out, _ = det.infer(np.zeros((240, 320, 3), np.uint8))
    assert out.shape == (1, 5, 40 * 40 + 20 * 20 + 10 * 10)
    big = load_detector(DetectorConfig(model=str(path), input_size=640))
    assert big.infer(np.zeros((240, 320, 3), np.uint8))[0].shape == (1, 5, 8400)
    # The torch model and the exported graph agree.
    x = torch.rand(1, 3, 320, 320)
    ref = net.eval().export_forward(x).detach().numpy()
    got = det.session.run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)


def test_stride4_level_adds_a_four_times_finer_grid():
    """--stride4: one more level at a quarter of the stride-8 cell size, so 640x384 gives 160x96 more points."""
    plain = PotholeNet(num_classes=2, width=16, backbone="lite0")
    fine = PotholeNet(num_classes=2, width=16, backbone="lite0", stride4=True)
    x = torch.zeros(1, 3, 384, 640)
    with torch.no_grad():
        n_plain = plain(x)[2].shape[0]
        logits, boxes, points = fine(x)
    assert n_plain == 80 * 48 + 40 * 24 + 20 * 12
    assert points.shape[0] == n_plain + 160 * 96
    assert logits.shape == (1, points.shape[0], 2) and boxes.shape == (1, points.shape[0], 4)
    assert points[0].tolist() == [2.0, 2.0]  # centre of the first stride-4 cell
