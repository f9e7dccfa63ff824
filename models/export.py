"""Export trained PotholeNet weights to ONNX in the YOLOv8 layout [1, 4 + nc, N].

The input is `images` [1, 3, H, W] float RGB 0..1 with H and W dynamic (multiples of 32); `imgsz` in the
metadata says the size it was trained and evaluated at. Metadata also carries `names` in the Ultralytics
format ("{0: 'pothole'}"), so any YOLO-aware tool reads the classes.

    python -m models.export models/runs/bundled/best.pt out.onnx
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import onnx
import torch

from models.net import ExportWrapper, PotholeNet

HERE = Path(__file__).resolve().parent


def load_weights(ckpt_path: Path) -> tuple[PotholeNet, dict]:
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    classes = ck.get("classes", ["pothole"])
    arch = ck.get("arch", {})
    net = PotholeNet(num_classes=len(classes), width=arch.get("width", 64), backbone=arch.get("backbone", "scratch"),
                     stride4=arch.get("stride4", False))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["ema"].items()})
    net.eval()
    return net, ck


def export_onnx(ckpt_path: Path, out_path: Path, *, name: str = "roadmon-road-damage", version: str = "1",
                opset: int = 17, logit_shift: float = 0.0) -> Path:
    """logit_shift is added to the class logits (through the bias of the last class conv): a monotonic
    recalibration of the scores that leaves rankings and AP untouched but moves the operating point."""
    net, ck = load_weights(ckpt_path)
    with torch.no_grad():
        net.head.cls.bias += logit_shift
    classes = ck.get("classes", ["pothole"])
    width, height = ck.get("arch", {}).get("shape") or (int(ck.get("size", 320)),) * 2
    dummy = torch.zeros(1, 3, height, width)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ExportWrapper(net), (dummy,), str(out_path), input_names=["images"],
                          output_names=["output0"], opset_version=opset, dynamo=False,
                          dynamic_axes={"images": {2: "height", 3: "width"}, "output0": {2: "anchors"}})
    model = onnx.load(str(out_path))
    meta = {
        "names": repr(dict(enumerate(classes))),
        "imgsz": repr([height, width]),  # Ultralytics order: [h, w]
        "stride": "32",
        "task": "detect",
        "description": name,
        "version": version,
        "author": "road-monitor",
        "license": "Apache-2.0 (weights trained on ODbL-licensed data, see MODEL_CARD.md)",
        "input": "RGB float 0..1, letterboxed with grey 114",
    }
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return out_path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--version", default="1")
    args = ap.parse_args()
    print(export_onnx(args.checkpoint, args.out, version=args.version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
