"""Training data for the bundled model: real pothole photos (YOLO layout) plus optional synthetic road scenes.

Photos are decoded once, shrunk to at most CACHE_SIDE pixels and kept in memory (and pickled under
models/cache/ so a resumed run starts in seconds). Every sample is built on the fly with strong augmentation:
4-image mosaics, random scale and crop, horizontal flips and HSV jitter, so a few hundred photos last
a few hundred epochs. Synthetic scenes come from edge_agent.sim.render when that module is present.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.evaluate import read_yolo_labels

log = logging.getLogger(__name__)

CACHE_SIDE = 448
PAD_VALUE = 114
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
# Rendering a scene costs ~0.1 s, several times a training sample, so scenes come from a pool that
# is topped up a little at every validation instead of one render per sample.
SYNTH_SIZE = (640, 360)
SYNTH_POOL = 600


@dataclass
class Sample:
    name: str
    image: np.ndarray  # BGR uint8
    boxes: np.ndarray  # [M, 4] xyxy pixels of `image`
    classes: np.ndarray  # [M] int


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_EXTS)


def split_names(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A fixed split that does not depend on file order or platform: rank names by a seeded hash."""
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    n_val = round(len(names) * val_fraction)
    return sorted(ranked[n_val:]), sorted(ranked[:n_val])


def load_dataset(root: Path, cache_dir: Path) -> list[Sample]:
    files = list_images(root)
    key = hashlib.sha256("|".join(f"{p.name}:{p.stat().st_size}" for p in files).encode()).hexdigest()[:16]
    cache = cache_dir / f"photos_{CACHE_SIDE}_{key}.pkl"
    if cache.exists():
        with cache.open("rb") as fh:
            return pickle.load(fh)
    samples = []
    for path in files:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            log.warning("skipping unreadable image %s", path)
            continue
        h, w = img.shape[:2]
        boxes, classes = read_yolo_labels(root / "labels" / f"{path.stem}.txt", w, h)
        scale = min(1.0, CACHE_SIDE / max(h, w))
        if scale < 1.0:
            img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            boxes = boxes * scale
        samples.append(Sample(path.name, img, boxes, classes))
    cache_dir.mkdir(parents=True, exist_ok=True)
    with cache.open("wb") as fh:
        pickle.dump(samples, fh)
    return samples


def letterbox_sample(img: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit into size x size keeping aspect, padding centred (the same as the runtime letterbox)."""
    h, w = img.shape[:2]
    r = size / max(h, w)
    nw, nh = round(w * r), round(h * r)
    out = np.full((size, size, 3), PAD_VALUE, np.uint8)
    dx, dy = (size - nw) // 2, (size - nh) // 2
    out[dy:dy + nh, dx:dx + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, boxes * r + np.array([dx, dy, dx, dy], np.float32)


def synthetic_available() -> bool:
    try:
        return importlib.util.find_spec("edge_agent.sim.render") is not None
    except ModuleNotFoundError:
        return False


class Augmenter:
    """Builds size x size training samples from photos (and synthetic scenes) with a seeded generator."""

    def __init__(self, samples: list[Sample], size: int, rng: np.random.Generator, mosaic_p: float = 0.5,
                 synth_fraction: float = 0.0) -> None:
        self.samples = samples
        self.size = size
        self.rng = rng
        self.mosaic_p = mosaic_p
        self.synth_fraction = synth_fraction
        self._render = None
        self._pool: list[Sample] = []
        self.try_enable_synthetic()

    def try_enable_synthetic(self) -> bool:
        """Pick up the scene renderer once it exists (it may land while a long run is going)."""
        if self._render is not None or self.synth_fraction <= 0 or not synthetic_available():
            return self._render is not None
        try:
            from edge_agent.sim.render import random_training_scene
        except Exception as exc:  # a half-written module must not stop training
            log.warning("synthetic scenes unavailable: %s", exc)
            return False
        self._render = random_training_scene
        self.refresh_synthetic(SYNTH_POOL // 3)
        log.info("synthetic road scenes enabled for %.0f%% of samples", 100 * self.synth_fraction)
        return True

    def __call__(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r = self.rng.random()
        synthetic = None
        if self._render is not None and r < self.synth_fraction:
            synthetic = self._synthetic_or_none()
        if synthetic is not None:
            img, boxes, classes = synthetic
        elif self.rng.random() < self.mosaic_p:
            img, boxes, classes = self._mosaic()
        else:
            s = self.samples[self.rng.integers(len(self.samples))]
            img, boxes, classes = self._scale_crop(s.image, s.boxes, s.classes, self.size,
                                                   self.rng.uniform(0.6, 1.5))
        if self.rng.random() < 0.5:
            img = img[:, ::-1].copy()
            boxes = boxes.copy()
            boxes[:, [0, 2]] = self.size - boxes[:, [2, 0]]
        img = self._hsv(img)
        return img, boxes, classes

    def _synthetic_or_none(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if not self._pool:
            return None
        smp = self._pool[self.rng.integers(len(self._pool))]
        # Mostly the whole frame, as the agent sees it; sometimes zoomed in, as a crop of a bigger frame would be.
        zoom = 1.0 if self.rng.random() < 0.6 else self.rng.uniform(1.0, 2.0)
        return self._scale_crop(smp.image, smp.boxes, smp.classes, self.size, zoom)

    def refresh_synthetic(self, count: int) -> None:
        """Render `count` new scenes into the pool (replacing random old ones once it is full)."""
        if self._render is None:
            return
        for _ in range(count):
            try:
                img, boxes, names = self._render(self.rng, SYNTH_SIZE[0], SYNTH_SIZE[1])
            except Exception as exc:  # a renderer bug costs one scene, not the run
                log.warning("synthetic scene failed: %r", exc)
                return
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            keep = np.array([n == "pothole" for n in names], bool).reshape(-1)
            smp = Sample("synthetic", img, boxes[keep], np.zeros(int(keep.sum()), np.int64))
            if len(self._pool) < SYNTH_POOL:
                self._pool.append(smp)
            else:
                self._pool[self.rng.integers(SYNTH_POOL)] = smp

    def _scale_crop(self, img: np.ndarray, boxes: np.ndarray, classes: np.ndarray, size: int,
                    zoom: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scale so the long side is zoom*size, then place (or crop) at a random offset on a size canvas."""
        h, w = img.shape[:2]
        r = zoom * size / max(h, w)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
        ox = int(self.rng.integers(min(0, size - nw), max(0, size - nw) + 1))
        oy = int(self.rng.integers(min(0, size - nh), max(0, size - nh) + 1))
        paste(canvas, resized, ox, oy)
        return (canvas, *clip_boxes(boxes * r + np.array([ox, oy, ox, oy], np.float32), classes, size, size))

    def _mosaic(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Four photos around a random centre on a 2x canvas, then a random rescale and crop back to size."""
        s = self.size
        canvas = np.full((2 * s, 2 * s, 3), PAD_VALUE, np.uint8)
        xc, yc = (int(self.rng.integers(s // 2, 3 * s // 2)) for _ in range(2))
        all_boxes, all_cls = [], []
        for k in range(4):
            smp = self.samples[self.rng.integers(len(self.samples))]
            h, w = smp.image.shape[:2]
            r = s * self.rng.uniform(0.7, 1.2) / max(h, w)
            nw, nh = max(1, round(w * r)), max(1, round(h * r))
            img = cv2.resize(smp.image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            ox = xc - nw if k in (0, 2) else xc
            oy = yc - nh if k in (0, 1) else yc
            paste(canvas, img, ox, oy)
            all_boxes.append(smp.boxes * r + np.array([ox, oy, ox, oy], np.float32))
            all_cls.append(smp.classes)
        boxes, classes = clip_boxes(np.concatenate(all_boxes), np.concatenate(all_cls), 2 * s, 2 * s)
        return self._scale_crop(canvas, boxes, classes, s, self.rng.uniform(1.0, 2.0))

    def _hsv(self, img: np.ndarray) -> np.ndarray:
        gains = self.rng.uniform(-1, 1, 3) * np.array([0.015, 0.6, 0.35]) + 1
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] * gains[0]) % 180
        hsv[..., 1:] *= gains[1:]
        return cv2.cvtColor(hsv.clip(0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)


def paste(canvas: np.ndarray, img: np.ndarray, ox: int, oy: int) -> None:
    """Copy img onto canvas at (ox, oy), clipping whatever falls outside."""
    ch, cw = canvas.shape[:2]
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + w, cw), min(oy + h, ch)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = img[y0 - oy:y1 - oy, x0 - ox:x1 - ox]


def clip_boxes(boxes: np.ndarray, classes: np.ndarray, w: int, h: int,
               min_side: float = 3.0, min_kept: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Clip to the canvas; drop boxes that became slivers or lost most of their area to the crop."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4).astype(np.float32), classes
    area0 = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    clipped = boxes.clip(0, [w, h, w, h])
    bw, bh = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (bw >= min_side) & (bh >= min_side) & (bw * bh >= min_kept * np.maximum(area0, 1e-6))
    return clipped[keep].astype(np.float32), classes[keep]
