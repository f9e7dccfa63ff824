"""`edge-agent model info|eval|quantize|bench`: inspect, measure and quantize detector models."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edge_agent.commands import config_option, finite
from edge_agent.config.detector import MAX_THREADS, DetectorConfig
from roadmon_contract.config_base import format_errors

model_app = typer.Typer(help="Inspect, evaluate, quantize and benchmark detector models.", no_args_is_help=True)
out = Console()
err = Console(stderr=True, soft_wrap=True)  # one message, one line, also in logs and pipes

MODEL_HELP = "Model .onnx path, or 'bundled'"
# --runs: on a slow box (~1 s per inference) 10 000 runs are hours per model, and a median or p95 does not
# settle further after a few hundred; a bigger number is a typo that would keep the box busy for days.
MAX_RUNS = 10_000
# --calib-images: calibration ranges settle after a few hundred images; more only costs memory and hours.
MAX_CALIB_IMAGES = 10_000


def _names(value: str | None) -> str | None:
    if value is not None and not all(n.strip() for n in value.split(",")):
        raise typer.BadParameter(f"{value!r}: give every class a name, comma-separated in class-id order "
                                 "(e.g. pothole,crack)")
    return value


def _threads() -> Any:
    return typer.Option(0, "--threads", min=0, max=MAX_THREADS, help="Inference threads (0 = ONNX Runtime default)")


def _names_option() -> Any:
    return typer.Option(None, "--names", callback=_names,
                        help="Class names in class-id order, comma-separated, for a model that names none "
                             "(overrides its metadata and manifest)")


def _need_lab(what: str, *modules: str) -> None:
    """Exit 2 naming the `lab` extra when one of MODULES is not installed (a box gets `edge` only)."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        err.print(f"{what} needs {', '.join(missing)}: install the lab extra, pip install '<checkout>[edge,lab]' "
                  "(a box gets [edge] only; run it on a workstation)", style="red", markup=False, highlight=False)
        raise typer.Exit(2)


def _load(model: str, threads: int = 0, names: str | None = None, canvas: tuple[int, int] | None = None,
          **overrides: object):
    from edge_agent.detect.detector import ModelError, load_detector

    if names:
        overrides["class_names"] = [n.strip() for n in names.split(",")]
    if model != "bundled" and Path(model).expanduser().is_dir():  # not "not found": it is there, as a folder
        err.print(f"[red]model not usable:[/red] {model} is a folder, not a file (give the .onnx file in it)",
                  highlight=False)
        raise typer.Exit(2)
    try:
        return load_detector(DetectorConfig(model=model, threads=threads, **overrides), canvas)
    except ValidationError as exc:
        err.print(f"[red]invalid detector settings:[/red] {'; '.join(format_errors(exc))}", highlight=False)
        raise typer.Exit(2) from None
    except ModelError as exc:
        err.print(f"[red]model not usable:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


@model_app.command("info")
def info(model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP + " (default: the one --config "
                                                                               "runs, else bundled)"),
         config: str | None = config_option(None, help="Agent config: describe the model the box runs (an update "
                                                      "it installed, else detector.model)"),
         names: str | None = _names_option(),
         as_json: bool = typer.Option(False, "--json", help="Print one JSON object")) -> None:
    """Load a model (with its load checks) and show what it is."""
    if model is None and config:  # on a box, the update it installed (current.onnx) is what runs, not `bundled`
        from edge_agent.commands.run import load_config
        from edge_agent.detect.model_update import effective_model

        cfg = load_config(config)
        model = effective_model(cfg.detector, cfg.model_update, cfg.device.state_dir)
    det = _load(model or "bundled", names=names)
    i = det.info
    data = {"name": i.name, "version": i.version, "path": i.path, "sha256": i.sha256, "classes": list(i.classes),
            "input_size": list(i.input_size), "input_dtype": i.input_dtype, "input_layout": i.input_layout,
            "layout": i.layout, "box_units": i.box_units, "provider": i.provider, "quantization": i.quantization}
    if as_json:
        typer.echo(json.dumps(data))
        return
    table = Table(show_header=False)
    for k, v in data.items():
        table.add_row(k, str(v))
    out.print(table)


def _not_a_dataset(data: Path, images: int) -> str | None:
    """What keeps DATA (holding IMAGES images) from being a YOLO-layout folder, in words; None when it is one."""
    missing = [name for name in ("images", "labels") if not (data / name).is_dir()]
    if missing:
        return (f"no {' and no '.join(f'{name}/' for name in missing)} folder; expected a YOLO-layout folder: "
                "images/ with the pictures and labels/ with one 'class cx cy w h' .txt per picture")
    if images == 0:
        return "images/ holds no pictures (.jpg, .jpeg, .png, .bmp, .webp)"
    return None


@model_app.command("eval")
def evaluate(model: str = typer.Option("bundled", "--model", "-m", help=MODEL_HELP),
             data: Path = typer.Option(..., "--data", "-d", exists=True, file_okay=False,
                                       help="YOLO-layout folder: images/ + labels/"),
             threshold: float | None = typer.Option(None, "--threshold", min=0.0, max=1.0, callback=finite,
                                                    help="Score threshold for P/R/F1; default: each class's "
                                                         "working threshold (manifest class_thresholds), else "
                                                         "detector.score_threshold"),
             as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
             plot: Path | None = typer.Option(None, "--plot", help="Write the PR curve to this PNG (its folder "
                                                                   "must exist)"),
             threads: int = _threads(),
             names: str | None = _names_option(),
             label_map: str | None = typer.Option(
                 None, "--label-map", help="Which model class each label id is, e.g. 0=D40,1=D00 (by the model's "
                                           "class name or id); labels of ids not listed are left out. Default: "
                                           "label id = model class id"),
             mirror_pass: bool = typer.Option(False, "--mirror-pass",
                                              help="Look at each image mirrored too and fuse the two passes "
                                                   "(detector.mirror_pass)")) -> None:
    """AP50 per class and overall (all-point, IoU 0.5), P/R/F1 at the threshold, latency median/p95."""
    from edge_agent.lab.evaluate import evaluate_dataset, list_dataset_images, parse_label_map, plot_pr

    if plot is not None:
        _need_lab("model eval --plot", "matplotlib")
    if plot is not None and plot.suffix.lower() != ".png":  # matplotlib would write PLOT.png and we'd say PLOT
        raise typer.BadParameter(f"{plot}: give a file name ending in .png", param_hint="'--plot'")
    if plot is not None and not plot.parent.is_dir():  # found out now, not after minutes of evaluation
        raise typer.BadParameter(f"folder {plot.parent} does not exist", param_hint="'--plot'")
    n = len(list_dataset_images(data))
    problem = _not_a_dataset(data, n)
    if problem:  # found out before the model loads
        err.print(f"[red]{data}: {problem}[/red]", highlight=False)
        raise typer.Exit(2)
    det = _load(model, threads, names, mirror_pass=mirror_pass)
    thr = threshold  # None: each class at its own working threshold
    try:
        mapping = None if label_map is None else parse_label_map(label_map, list(det.info.classes))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--label-map'") from None
    with _progress(as_json) as bar:
        task = bar.add_task("evaluating", total=n)
        try:
            result = evaluate_dataset(det, data, thr, progress=lambda: bar.advance(task), label_map=mapping)
        except ValueError as exc:
            err.print(f"[red]cannot evaluate:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
    if plot:
        plot_pr(result, plot, f"{det.info.name} on {data.name}: AP50 {result['ap50']:.3f}")
    result.pop("curves")
    if as_json:
        typer.echo(json.dumps(result))
        return
    table = Table(title=f"{det.info.name} {det.info.version} on {data} ({result['images']} images)")
    for col in ("class", "AP50", "threshold", "P", "R", "F1", "boxes", "detections"):
        table.add_column(col, justify="right" if col != "class" else "left")
    for name, m in result["per_class"].items():
        unlabelled = m["n_gt"] == 0  # no true box of this class here: AP and recall say nothing
        table.add_row(name, "n/a" if unlabelled else f"{m['ap50']:.3f}", f"{m['threshold']:.2f}",
                      f"{m['precision']:.3f}", "n/a" if unlabelled else f"{m['recall']:.3f}",
                      "n/a" if unlabelled else f"{m['f1']:.3f}", str(m["n_gt"]), str(m["n_det"]))
    table.add_row("[b]all[/b]", f"[b]{result['ap50']:.3f}[/b]", "", f"{result['precision']:.3f}",
                  f"{result['recall']:.3f}", f"{result['f1']:.3f}", "", "")
    out.print(table)
    lat = result["latency_ms"]
    out.print("P/R/F1 at each class's threshold; latency per image (letterbox + inference + decoding): "
              f"median {lat['median']:.1f} ms, p95 {lat['p95']:.1f} ms")
    if plot:
        out.print(f"PR curve: {plot}")


@model_app.command("quantize")
def quantize(src: Path = typer.Argument(..., help="FP32 .onnx model"),
             dst: Path = typer.Argument(..., help="Where to write the chosen model"),
             calib: Path = typer.Option(..., "--calib", help="Folder of real images (or YOLO layout) to calibrate on"),
             eval_dir: Path | None = typer.Option(None, "--eval",
                                                  help="Labelled YOLO-layout folder for AP50 (default: --calib; "
                                                       "without labels, FP32's detections are the reference)"),
             max_ap_drop: float = typer.Option(0.01, "--max-ap-drop", min=0.0, max=1.0, callback=finite,
                                               help="Largest AP50 loss accepted vs FP32"),
             calib_images: int = typer.Option(64, "--calib-images", min=1, max=MAX_CALIB_IMAGES,
                                              help="How many images to calibrate on"),
             threads: int = _threads(),
             runs: int = typer.Option(30, "--runs", min=1, max=MAX_RUNS, help="Timed inferences per format"),
             as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object")) -> None:
    """Static INT8 quantization: try the formats, keep the fastest within --max-ap-drop AP50 of FP32."""
    from edge_agent.detect.detector import ModelError

    _need_lab("model quantize", "onnx", "sympy")
    from edge_agent.lab.quantize import quantize_model

    say = (lambda msg: None) if as_json else (lambda msg: err.print(f"[dim]{msg}[/dim]", highlight=False))
    try:
        report = quantize_model(src, dst, calib, eval_dir=eval_dir, max_ap_drop=max_ap_drop,
                                calib_images=calib_images, threads=threads, runs=runs, progress=say)
    except (ValueError, OSError, ModelError) as exc:  # ModelError: the model itself does not load
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
        return
    table = Table(title=f"INT8 formats for {src.name} ({report.accuracy_source})")
    for col in ("format", "AP50", "latency ms", "vs FP32", "kept?"):
        table.add_column(col)
    rows = [report.fp32, *report.trials]
    for t in rows:
        ap = "-" if t.ap50 is None else f"{t.ap50:.3f}"
        lat = "-" if t.latency_ms != t.latency_ms else f"{t.latency_ms:.1f}"
        mark = "[green]chosen[/green]" if t.format == report.chosen else t.note
        table.add_row(t.format, ap, lat, f"{t.speedup:.2f}x", mark)
    out.print(table)
    out.print(report.reason)
    out.print(f"wrote {dst}")


@model_app.command("bench")
def bench(model: str = typer.Option("bundled", "--model", "-m", help=MODEL_HELP),
          fp32: str | None = typer.Option(None, "--fp32", help="FP32 counterpart; default: the manifest's "
                                                                "'fp32_model' beside the model"),
          runs: int = typer.Option(50, "--runs", min=1, max=MAX_RUNS, help="Timed inferences per model"),
          threads: int = _threads(),
          names: str | None = _names_option(),
          as_json: bool = typer.Option(False, "--json", help="Print one JSON object")) -> None:
    """FP32 vs INT8 latency of a model on this box, so an installer picks whichever is faster here."""
    from edge_agent.detect.detector import sample_road_image
    from edge_agent.lab import MIN_SPEEDUP

    det = _load(model, threads, names)
    models = {det.info.quantization or "model": det}
    ref = fp32 or det.info.manifest.get("fp32_model")
    if ref and "fp32" in models:
        err.print("the model is FP32 itself (INT8 was not faster where it was built); timing it alone")
        ref = None
    ref_path = None if not ref else Path(ref) if Path(ref).is_absolute() or fp32 else Path(det.info.path).parent / ref
    if ref_path is not None and not fp32 and not ref_path.is_file():
        # The installer places the INT8 model alone (models/<sha256>.onnx): its manifest's twin is not beside it.
        err.print(f"the manifest's FP32 twin {ref!r} is not beside the model; timing it alone (--fp32 FILE "
                  "compares with one)", highlight=False)
        ref_path = None
    if ref_path is not None:
        models["fp32"] = _load(str(ref_path), threads, names, canvas=det.info.input_size)
        if models["fp32"].info.input_size != det.info.input_size:
            err.print(f"[yellow]the FP32 model's input is fixed at {models['fp32'].info.input_size}, the model's is "
                      f"{det.info.input_size}: the times are not comparable[/yellow]", highlight=False)
    frame = sample_road_image(1280, 720)
    times: dict[str, list[float]] = {k: [] for k in models}
    for d in models.values():
        d.infer(frame)
    with _progress(as_json) as bar:
        task = bar.add_task("timing", total=runs)
        for _ in range(runs):
            for name, d in models.items():  # taking turns, so background load hits all alike
                t0 = time.monotonic()
                d.infer(frame)
                times[name].append(1000 * (time.monotonic() - t0))
            bar.advance(task)
    result = {name: {"median_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95)),
                     "path": models[name].info.path} for name, t in times.items()}
    speedup = None
    if "fp32" in result and len(result) == 2:
        other = next(k for k in result if k != "fp32")
        speedup = result["fp32"]["median_ms"] / result[other]["median_ms"]
    if as_json:  # the models' times, and beside them the speedup when there is one
        typer.echo(json.dumps(result if speedup is None else result | {"speedup_vs_fp32": speedup}))
        return
    table = Table(title=f"latency on this machine, {det.info.input_size[0]}x{det.info.input_size[1]} input")
    for col in ("model", "median ms", "p95 ms", "file"):
        table.add_column(col)
    for name, r in result.items():
        table.add_row(name, f"{r['median_ms']:.1f}", f"{r['p95_ms']:.1f}", r["path"])
    out.print(table)
    if speedup is not None:
        # Only a model the quantizer made is known to be INT8; another (an FP16 export, say) is "the model".
        what = "INT8" if det.info.quantization else "the model"
        verdict = (f"use {what}" if speedup >= MIN_SPEEDUP else f"use the FP32 model ({what} does not pay here)")
        out.print(f"{what[0].upper() + what[1:]} is {speedup:.2f}x FP32 speed here: {verdict}")


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, disable=quiet, transient=True)


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
