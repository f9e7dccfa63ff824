"""Train the bundled pothole detector from scratch on CPU, then export, quantize, evaluate and write its card.

    python models/train.py --minutes 60            # train (resumes from models/runs/<run>/last.pt)
    python models/train.py --all                   # train if unfinished, then export -> quantize -> eval -> card

The learning-rate schedule runs on a training-time budget (--minutes) or a step count (--iters), so a run
that is stopped and resumed ends where an uninterrupted one would. Checkpoints go to models/runs/ every few
minutes; model selection uses AP50 of the EMA weights on a held-out part of the photos (fixed seeded split).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from assign import detection_loss  # noqa: E402
from data import Augmenter, Sample, letterbox_sample, load_dataset, split_names, synthetic_available  # noqa: E402
from net import PotholeNet  # noqa: E402

from edge_agent import evaluate  # noqa: E402

log = logging.getLogger("train")

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "potholes-chitholian" / "train"
CLASS_NAMES = ["pothole"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="YOLO-layout folder (images/, labels/)")
    ap.add_argument("--run", default="bundled", help="run name under models/runs/")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--small-size", type=int, default=256,
                    help="input size for the first --small-until of the schedule (0.64x the compute of 320)")
    ap.add_argument("--small-until", type=float, default=0.6)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--minutes", type=float, default=60.0, help="training-time budget the schedule spans")
    ap.add_argument("--iters", type=int, default=0, help="use a step budget instead of --minutes")
    ap.add_argument("--val-fraction", type=float, default=0.17)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synth-fraction", type=float, default=0.3,
                    help="share of samples rendered by edge_agent.sim.render (when present)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads; 0 = keep switching between 1 and 2, whichever steps faster now "
                         "(on a shared 2-core box two threads collapse when another job takes a core)")
    ap.add_argument("--ckpt-every", type=float, default=180.0, help="seconds between checkpoints")
    ap.add_argument("--eval-every", type=float, default=480.0, help="seconds between validation runs")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    ap.add_argument("--all", action="store_true", help="train, export, quantize, evaluate, write the card")
    return ap.parse_args(argv)


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """BGR uint8 HWC -> RGB float 0..1 NCHW, exactly what the runtime feeds the ONNX model."""
    arr = np.stack(images)[..., ::-1].transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255.0)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    from assign import box_iou

    order = scores.argsort(descending=True)
    boxes = boxes[order]
    ious = box_iou(boxes, boxes)
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1:] &= ious[i, i + 1:] <= iou
    return order[keep]


@torch.no_grad()
def validate(model: PotholeNet, val: list[Sample], size: int, score_threshold: float = 0.25) -> dict:
    model.eval()
    records: dict[int, evaluate.ClassRecord] = {}
    for start in range(0, len(val), 16):
        chunk = val[start:start + 16]
        boxed = [letterbox_sample(s.image, s.boxes, size) for s in chunk]
        logits, boxes, _ = model(to_tensor([b[0] for b in boxed]))
        scores = logits.sigmoid()[..., 0]
        for i, s in enumerate(chunk):
            m = scores[i] > 0.001
            b, sc = boxes[i][m], scores[i][m]
            top = sc.argsort(descending=True)[:300]
            b, sc = b[top], sc[top]
            keep = nms(b, sc, 0.5)
            evaluate.add_image(records, b[keep].numpy(), sc[keep].numpy(), np.zeros(len(keep), int),
                               boxed[i][1], s.classes)
    m = evaluate.summarize(records, score_threshold).get(0)
    model.train()
    if m is None:
        return {"ap50": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    return {"ap50": m.ap50, "precision": m.precision, "recall": m.recall, "f1": m.f1}


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


def train(args: argparse.Namespace) -> Path:
    threads = ThreadTuner(args.threads)
    run_dir = HERE / "runs" / args.run
    run_dir.mkdir(parents=True, exist_ok=True)
    samples = load_dataset(args.data, HERE / "cache")
    train_names, val_names = split_names([s.name for s in samples], args.val_fraction, args.seed)
    (run_dir / "split.json").write_text(json.dumps({"train": train_names, "val": val_names}, indent=1))
    by_name = {s.name: s for s in samples}
    train_set = [by_name[n] for n in train_names]
    val_set = [by_name[n] for n in val_names]
    log.info("photos: %d train, %d val; synthetic scenes: %s", len(train_set), len(val_set),
             "yes" if synthetic_available() and args.synth_fraction > 0 else "no")

    torch.manual_seed(args.seed)
    model = PotholeNet(num_classes=len(CLASS_NAMES))
    ema = Ema(model)
    opt = make_optimizer(model, args.lr)
    state = {"step": 0, "train_s": 0.0, "best_ap50": -1.0, "history": []}
    rng = np.random.default_rng(args.seed)
    last = run_dir / "last.pt"
    if last.exists() and not args.fresh:
        ck = torch.load(last, weights_only=False)
        model.load_state_dict(ck["model"])
        ema.model.load_state_dict(ck["ema"])
        ema.updates = ck["ema_updates"]
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        log.info("resumed at step %d (%.1f min trained, best AP50 %.3f)", state["step"], state["train_s"] / 60,
                 state["best_ap50"])
    aug = Augmenter(train_set, args.size, rng, synth_fraction=args.synth_fraction)

    def progress() -> float:
        return state["step"] / args.iters if args.iters else state["train_s"] / (args.minutes * 60)

    def save(path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "ema": ema.model.state_dict(), "ema_updates": ema.updates,
                    "opt": opt.state_dict(), "state": state, "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "args": vars(args) | {"data": str(args.data)}}, tmp)
        tmp.replace(path)

    def run_validation() -> None:
        metrics = validate(ema.model, val_set, args.size)
        metrics |= {"step": state["step"], "minutes": round(state["train_s"] / 60, 2)}
        state["history"].append(metrics)
        log.info("val step %d: AP50 %.3f P %.3f R %.3f F1 %.3f", state["step"], metrics["ap50"],
                 metrics["precision"], metrics["recall"], metrics["f1"])
        if metrics["ap50"] > state["best_ap50"]:
            state["best_ap50"] = metrics["ap50"]
            torch.save({"ema": ema.model.state_dict(), "metrics": metrics, "classes": CLASS_NAMES,
                        "size": args.size}, run_dir / "best.pt")

    model.train()
    last_ckpt = last_eval = time.monotonic()
    t_log, losses = time.monotonic(), []
    while progress() < 1.0:
        t0 = time.monotonic()
        # The last 10% of the schedule sees whole photos only, like the validation images (no mosaic seams).
        aug.mosaic_p = 0.5 if progress() < 0.9 else 0.0
        aug.size = args.small_size if progress() < args.small_until else args.size
        batch = [aug() for _ in range(args.batch)]
        images = to_tensor([b[0] for b in batch])
        targets = [(torch.from_numpy(b[1]), torch.from_numpy(b[2])) for b in batch]
        for g in opt.param_groups:
            g["lr"] = lr_at(progress(), args.lr, state["step"])
        logits, boxes, points = model(images)
        loss, parts = detection_loss(logits, boxes, points, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        ema.update(model)
        state["step"] += 1
        state["train_s"] += time.monotonic() - t0
        threads.observe(time.monotonic() - t0)
        losses.append([float(loss.detach()), parts["cls"], parts["box"], parts["pos"]])
        now = time.monotonic()
        if now - t_log > 60:
            m = np.mean(losses, 0)
            log.info("step %d  %.1f%%  loss %.3f (cls %.3f box %.3f pos/img %.1f)  lr %.2e  %.2f s/step",
                     state["step"], 100 * progress(), m[0], m[1], m[2], m[3] / args.batch,
                     opt.param_groups[0]["lr"], (now - t_log) / len(losses))
            t_log, losses = now, []
        if now - last_eval > args.eval_every:
            if aug.try_enable_synthetic():
                aug.refresh_synthetic(30)
            run_validation()
            last_eval = time.monotonic()
        if now - last_ckpt > args.ckpt_every:
            save(last)
            last_ckpt = time.monotonic()
    run_validation()
    save(last)
    (run_dir / "done.json").write_text(json.dumps(state, indent=1))
    log.info("training finished: %d steps, %.1f min, best AP50 %.3f", state["step"], state["train_s"] / 60,
             state["best_ap50"])
    return run_dir


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    args = parse_args(argv)
    run_dir = HERE / "runs" / args.run
    if not (args.all and (run_dir / "done.json").exists()):
        if not args.data.is_dir():
            log.error("training data not found: %s (expected ../shared/datasets/potholes-chitholian/train)",
                      args.data)
            return 2
        train(args)
    if args.all:
        from pipeline import build_bundle

        build_bundle(run_dir, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
