"""MODEL_CARD.md from the manifest: what the bundled model is, how it was made, how well and how fast it runs."""

from __future__ import annotations

from pathlib import Path


def _pct(x: float) -> str:
    return f"{x:.3f}"


def write_card(path: Path, m: dict, state: dict) -> Path:
    val, fp = m["metrics"]["val"], m["metrics"]["val_fp32"]
    tr, q = m["training"], m["quantization"]
    lines = [
        f"# {m['name']} {m['version']}: the bundled pothole detector",
        "",
        "A small anchor-free detector written and trained from scratch for this project, on CPU, in about an "
        "hour. It finds one class, `pothole`, in road images. It is a working default, not a state-of-the-art "
        "model: bring a stronger one (any YOLOv5/v8/11 or end-to-end ONNX export) with `detector.model`.",
        "",
        "| | |",
        "|---|---|",
        f"| file | `model.onnx` ({q['format']}), sha256 `{m['sha256']}` |",
        "| FP32 twin | `model-fp32.onnx` (for `edge-agent model bench`) |",
        f"| classes | {', '.join(m['classes'])} |",
        f"| input | {m['input_size'][0]}x{m['input_size'][1]}, {m['input']} |",
        f"| output | {m['output_layout']} |",
        f"| architecture | {m['architecture']} |",
        f"| default score threshold | {m['score_threshold']} (scores recalibrated so this is the best-F1 point on "
        f"the held-out photos: class logit shifted by {m['score_calibration']['logit_shift']:+.2f}; rankings "
        "and AP unchanged) |",
        f"| licence | {m['licence']} |",
        "",
        "## Training data",
        "",
        f"- {tr['data']}; licence {tr['data_licence']}. Source: github.com/chitholian/Potholes-Detection via "
        "Roboflow (public.roboflow.ai/object-detection/pothole). The images are not part of this repository.",
        f"- Validation: {tr['validation']}; never trained on.",
        f"- Synthetic: {tr['synthetic']}, so the drive simulator's painted potholes are found too.",
        f"- {tr['steps']} steps of batch {tr['batch']} in {tr['minutes']} min on {tr['hardware']}; no "
        "pretrained weights. Augmentation: 4-photo mosaics, random scale/crop, flips, HSV jitter; EMA weights; "
        "the first 60% of the schedule at 256 px, the rest at 320 px. Reproduce with `make model`.",
        "",
        f"## Accuracy (held-out photos, {m['input_size'][0]} px, IoU 0.5)",
        "",
        "| model | AP50 | P | R | F1 (at score >= " + f"{val['score_threshold']}) | images |",
        "|---|---|---|---|---|---|",
        f"| shipped ({q['format']}) | {_pct(val['ap50'])} | {_pct(val['precision'])} | {_pct(val['recall'])} | "
        f"{_pct(val['f1'])} | {val['images']} |",
        f"| FP32 | {_pct(fp['ap50'])} | {_pct(fp['precision'])} | {_pct(fp['recall'])} | {_pct(fp['f1'])} | "
        f"{fp['images']} |",
    ]
    syn = m["metrics"].get("synthetic")
    if syn:
        lines.append(f"| shipped, on {syn['images']} rendered drive-simulator scenes | {_pct(syn['ap50'])} | "
                     f"{_pct(syn['precision'])} | {_pct(syn['recall'])} | {_pct(syn['f1'])} | {syn['images']} |")
    lines += [
        "",
        "AP50 is all-point interpolated (`edge_agent/evaluate.py`, checked against a hand-worked case in "
        "tests/test_evaluate.py). The project goal was AP50 >= 0.55 at 320 px; the best small public pothole "
        "model we know reaches about 0.73 on comparable photos with COCO pretraining. PR curve: `pr_curve.png`.",
        "",
        "## Latency",
        "",
        f"Measured on {m['latency']['platform']}, one 1280x720 frame letterboxed to "
        f"{m['input_size'][0]} px (letterbox + inference), median:",
        "",
        "| threads | shipped ms | FP32 ms |",
        "|---|---|---|",
    ]
    for row in m["latency"]["rows"]:
        lines.append(f"| {row['threads']} | {row['int8_median_ms']} | {row['fp32_median_ms']} |")
    lines += [
        "",
        "Other platforms are not measured here: run `edge-agent model bench` on the target (a Pi 5 has the "
        "dot-product instructions INT8 needs; a Pi 4 does not, and may be faster with `model-fp32.onnx`).",
        "",
        "## Quantization",
        "",
        f"{q['reason']}.",
        "",
        "| format | AP50 | ms | vs FP32 | verdict |",
        "|---|---|---|---|---|",
        f"| fp32 | {_pct(q['fp32']['ap50'])} | {q['fp32']['latency_ms']:.1f} | 1.00x | reference |",
    ]
    for t in q["trials"]:
        ap = "-" if t["ap50"] is None else _pct(t["ap50"])
        ms = "-" if t["latency_ms"] != t["latency_ms"] else f"{t['latency_ms']:.1f}"
        lines.append(f"| {t['format']} | {ap} | {ms} | {t['speedup']:.2f}x | "
                     f"{'chosen' if t['format'] == q['format'] else t['note']} |")
    lines += [
        "",
        "## Limits",
        "",
        "- Trained on handheld photos and rendered scenes, not dashcam footage: expect misses on real dashcam "
        "video at distance, on wet roads, at night. Small potholes (< 10 px at the model input) are mostly missed.",
        "- One class. Cracks, patches and manholes are not detected (manholes may be confused with potholes).",
        "",
    ]
    path.write_text("\n".join(lines))
    return path
