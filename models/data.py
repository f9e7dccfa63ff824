"""Training data for the bundled model: vehicle-view survey frames, handheld pothole photos, synthetic scenes.

- survey: frames of a highway survey vehicle's forward camera with crack and pothole masks, turned into
  boxes by models/masks.py; split by highway (neighbouring frames show the same defects).
- handheld: pothole photos with boxes (YOLO layout); a seeded hash split.
- synthetic: road scenes rendered by edge_agent.lab.sim.render, potholes and cracks boxed (optional).

Images are decoded once, kept in memory and pickled under models/cache/, so a resumed run starts in seconds;
`write_pack` stores all of it as one compact file (WebP-encoded) that a training machine without the data
sets can read. Every sample is built on the fly: random scale and crop onto the training canvas (a
rectangle shaped like a camera frame), 4-image mosaics for the handheld photos, flips and HSV jitter.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.lab.evaluate import read_yolo_labels

log = logging.getLogger(__name__)

CLASSES = ("pothole", "crack")
# The labelled sets beside the project checkout (never committed into it): see their READMEs.
DATASETS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
DEFAULT_DATA = DATASETS / "potholes-chitholian" / "train"
DEFAULT_SURVEY = DATASETS / "cracks-potholes-passos2020"
# Validation highways of the survey set: every small highway (247 frames, 217 potholes, 280 cracks); the two
# long ones (RS_290, DF_251: 1,315 frames) train. See docs/model.md.
SURVEY_VAL_HIGHWAYS = ("DF_010", "DF_020", "DF_060", "DF_070", "ES_101", "ES_259", "ES_482")
CACHE_SIDE = 448
SURVEY_WIDTH = 640
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


def _cached_samples(files: list[Path], cache_dir: Path, kind: str,
                    labels: Callable[[Path, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[Sample]:
    """Every readable image of FILES as a Sample with LABELS(path, image) -> (image, boxes, classes), pickled
    under cache_dir keyed by KIND and the files' names and sizes (a resumed run starts in seconds)."""
    key = hashlib.sha256((kind + "|".join(f"{p.name}:{p.stat().st_size}" for p in files)).encode()).hexdigest()
    cache = cache_dir / f"{kind}_{key[:16]}.pkl"
    if cache.exists():
        with cache.open("rb") as fh:
            return pickle.load(fh)
    samples = []
    for path in files:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            log.warning("skipping unreadable image %s", path)
            continue
        samples.append(Sample(path.name, *labels(path, img)))
    cache_dir.mkdir(parents=True, exist_ok=True)
    with cache.open("wb") as fh:
        pickle.dump(samples, fh)
    return samples


def load_dataset(root: Path, cache_dir: Path) -> list[Sample]:
    """The photos of a YOLO-layout folder, shrunk to at most CACHE_SIDE pixels."""

    def labels(path: Path, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = img.shape[:2]
        boxes, classes = read_yolo_labels(root / "labels" / f"{path.stem}.txt", w, h)
        scale = min(1.0, CACHE_SIDE / max(h, w))
        if scale < 1.0:
            img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            boxes = boxes * scale
        return img, boxes, classes

    return _cached_samples(list_images(root), cache_dir, f"photos{CACHE_SIDE}", labels)


def load_survey(root: Path, cache_dir: Path) -> list[Sample]:
    """The survey frames with their mask-derived boxes (classes index CLASSES), cached like the photos."""
    from models.masks import CRACK_GAP, CRACK_MIN_LENGTH, POTHOLE_GAP, POTHOLE_MIN_AREA, boxes_for

    def labels(path: Path, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        found = boxes_for(root, path.stem)
        return (img, np.array([b.box for b in found], np.float32).reshape(-1, 4),
                np.array([b.cls for b in found], np.int64))

    rules = f"survey{POTHOLE_GAP}-{POTHOLE_MIN_AREA}-{CRACK_GAP}-{CRACK_MIN_LENGTH}"  # new rules, new cache
    return _cached_samples(list_images(root), cache_dir, rules, labels)


def split_survey(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    from models.masks import highway_of

    val = [s for s in samples if highway_of(s.name) in SURVEY_VAL_HIGHWAYS]
    return [s for s in samples if highway_of(s.name) not in SURVEY_VAL_HIGHWAYS], val


def write_pack(path: Path, sets: dict[str, list[Sample]], quality: int = 70) -> Path:
    """All sample sets in one file: images as WebP bytes (road texture at a third less than JPEG for the same
    look), boxes and classes as arrays (pickle)."""
    packed = {name: [(s.name, cv2.imencode(".webp", s.image, [cv2.IMWRITE_WEBP_QUALITY, quality])[1].tobytes(),
                      s.boxes, s.classes) for s in samples] for name, samples in sets.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump(packed, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def read_pack(path: Path) -> dict[str, list[Sample]]:
    with path.open("rb") as fh:
        packed = pickle.load(fh)
    return {name: [Sample(n, cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), boxes, classes)
                   for n, b, boxes, classes in rows] for name, rows in packed.items()}


def letterbox_sample(img: np.ndarray, boxes: np.ndarray, width: int,
                     height: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fit into width x height keeping aspect, padding centred (the same as the runtime letterbox)."""
    height = height or width
    h, w = img.shape[:2]
    r = min(width / w, height / h)
    nw, nh = round(w * r), round(h * r)
    out = np.full((height, width, 3), PAD_VALUE, np.uint8)
    dx, dy = (width - nw) // 2, (height - nh) // 2
    out[dy:dy + nh, dx:dx + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, boxes * r + np.array([dx, dy, dx, dy], np.float32)


def synthetic_available() -> bool:
    try:
        return importlib.util.find_spec("edge_agent.lab.sim.render") is not None
    except ModuleNotFoundError:
        return False


class Augmenter:
    """Builds width x height training samples from the sample sets with a seeded generator.

    Each sample comes from one domain, drawn by weight: survey frames (scaled to fill the canvas width, then
    zoomed 0.8-1.5x and cropped: far potholes get bigger, near ones get cut), handheld photos (half of them
    as 4-photo mosaics) and synthetic scenes (a pool rendered up front and topped up during training).
    """

    def __init__(self, domains: dict[str, list[Sample]], weights: dict[str, float], shape: tuple[int, int],
                 rng: np.random.Generator, mosaic_p: float = 0.5, synth_weight: float = 0.0,
                 synthetic: list[Sample] | None = None) -> None:
        """synthetic: pre-rendered scenes (a pack); without them scenes are rendered here when the renderer
        is importable."""
        self.domains = {k: v for k, v in domains.items() if v and weights.get(k, 0) > 0}
        self.weights = dict(weights)
        self.shape = shape  # (width, height)
        self.rng = rng
        self.mosaic_p = mosaic_p
        self.synth_weight = synth_weight
        self._render = None
        self._pool: list[Sample] = list(synthetic or [])
        if not self._pool:
            self.try_enable_synthetic()

    def try_enable_synthetic(self) -> bool:
        if self._render is not None or self.synth_weight <= 0 or not synthetic_available():
            return self._render is not None
        try:
            from edge_agent.lab.sim.render import random_training_scene
        except Exception as exc:  # a half-written module must not stop training
            log.warning("synthetic scenes unavailable: %s", exc)
            return False
        self._render = random_training_scene
        self.refresh_synthetic(SYNTH_POOL // 3)
        return True

    def _pick_domain(self) -> str:
        names = list(self.domains)
        w = np.array([self.weights[n] for n in names], float)
        if self._pool and self.synth_weight > 0:
            names.append("synthetic")
            w = np.append(w, self.synth_weight)
        return names[int(self.rng.choice(len(names), p=w / w.sum()))]

    def __call__(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        domain = self._pick_domain()
        if domain == "synthetic":
            smp = self._pool[self.rng.integers(len(self._pool))]
            img, boxes, classes = self._scale_crop(smp.image, smp.boxes, smp.classes, self._frame_zoom())
        elif domain == "handheld" and self.rng.random() < self.mosaic_p:
            img, boxes, classes = self._mosaic(self.domains[domain])
        else:
            pool = self.domains[domain]
            smp = pool[self.rng.integers(len(pool))]
            zoom = self._frame_zoom() if domain == "survey" else self.rng.uniform(0.6, 1.5)
            img, boxes, classes = self._scale_crop(smp.image, smp.boxes, smp.classes, zoom)
        if self.rng.random() < 0.5:
            img = img[:, ::-1].copy()
            boxes = boxes.copy()
            boxes[:, [0, 2]] = self.shape[0] - boxes[:, [2, 0]]
        img = self._hsv(img)
        return img, boxes, classes

    def _frame_zoom(self) -> float:
        """A camera frame: often letterboxed whole as the agent sees it, else zoomed (in or a little out)."""
        return 1.0 if self.rng.random() < 0.4 else float(self.rng.uniform(0.85, 1.6))

    def refresh_synthetic(self, count: int) -> None:
        """Render `count` new scenes into the pool (replacing random old ones once it is full)."""
        if self._render is None:
            return
        for _ in range(count):
            try:
                smp = render_sample(self._render, self.rng)
            except Exception as exc:  # a renderer bug costs one scene, not the run
                log.warning("synthetic scene failed: %r", exc)
                return
            if len(self._pool) < SYNTH_POOL:
                self._pool.append(smp)
            else:
                self._pool[self.rng.integers(SYNTH_POOL)] = smp

    def _scale_crop(self, img: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
                    zoom: float, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scale to zoom x (fit inside the canvas), then place (or crop) at a random offset on the canvas."""
        cw, ch = shape or self.shape
        h, w = img.shape[:2]
        r = zoom * min(cw / w, ch / h)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
        canvas = np.full((ch, cw, 3), PAD_VALUE, np.uint8)
        ox = int(self.rng.integers(min(0, cw - nw), max(0, cw - nw) + 1))
        oy = int(self.rng.integers(min(0, ch - nh), max(0, ch - nh) + 1))
        paste(canvas, resized, ox, oy)
        return (canvas, *clip_boxes(boxes * r + np.array([ox, oy, ox, oy], np.float32), classes, cw, ch))

    def _mosaic(self, pool: list[Sample]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Four photos around a random centre on a 2x canvas, then a random rescale and crop back."""
        cw, ch = self.shape
        s = max(cw, ch)
        canvas = np.full((2 * s, 2 * s, 3), PAD_VALUE, np.uint8)
        xc, yc = (int(self.rng.integers(s // 2, 3 * s // 2)) for _ in range(2))
        all_boxes, all_cls = [], []
        for k in range(4):
            smp = pool[self.rng.integers(len(pool))]
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
        return self._scale_crop(canvas, boxes, classes, self.rng.uniform(1.0, 2.0))

    def _hsv(self, img: np.ndarray) -> np.ndarray:
        gains = self.rng.uniform(-1, 1, 3) * np.array([0.015, 0.6, 0.35]) + 1
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] * gains[0]) % 180
        hsv[..., 1:] *= gains[1:]
        return cv2.cvtColor(hsv.clip(0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)


def render_sample(render: object, rng: np.random.Generator) -> Sample:
    """One synthetic scene with potholes and cracks boxed, classes indexing CLASSES."""
    img, boxes, names = render(rng, SYNTH_SIZE[0], SYNTH_SIZE[1], box_cracks=True)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Sample("synthetic", img, boxes, np.array([CLASSES.index(n) for n in names], np.int64))


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
