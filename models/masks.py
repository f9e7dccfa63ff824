"""Boxes from the survey set's defect masks: what one `crack` and one `pothole` are for the model.

The vehicle-view set (Passos et al. 2020) labels pixels, not objects. The rules, in pixels of the 640-px frame:

- pothole: a connected blob of the pothole mask after closing gaps of up to POTHOLE_GAP px (a pothole's rim
  is often drawn as a few touching pieces). Blobs under POTHOLE_MIN_AREA px² or POTHOLE_MIN_SIDE px on a
  side are dropped: at the far end of the lane that is a few centimetres, too small to see, let alone judge.
- crack: fragments within CRACK_GAP px of each other are one crack (a dilation by half the gap joins them:
  alligator cracking is a mesh of short pieces that a road owner counts as one cracked area, and a
  longitudinal crack is drawn with breaks). The box is that of the crack pixels, not of the dilated mask.
  A crack must be at least CRACK_MIN_LENGTH px long (the longer box side); shorter marks are noise or a
  fragment the annotator did not join.
- Very long cracks stay one box however long (a line along the lane is one defect on the map too).

Every box is kept whether or not it lies in the driven lane: a fleet drives every lane of a road, and the
detector must see what is there; the lane mask is only reported (`in_lane`) for the analysis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("pothole", "crack")
POTHOLE_GAP = 5
POTHOLE_MIN_AREA = 40
POTHOLE_MIN_SIDE = 5
CRACK_GAP = 20
CRACK_MIN_LENGTH = 24


@dataclass(frozen=True)
class MaskBox:
    cls: int  # index into CLASSES
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels (exclusive right/bottom edges)
    pixels: int  # defect pixels inside
    in_lane: bool


def read_mask(path: Path) -> np.ndarray | None:
    """A binary mask (bool) or None when the file is missing; unreadable files raise."""
    if not path.exists():
        return None
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise ValueError(f"unreadable mask {path}")
    return m > 127


def _components(mask: np.ndarray, join: np.ndarray) -> list[tuple[tuple[int, int, int, int], int]]:
    """Connected parts of `join` (a grown copy of mask), each with the box and count of mask's own pixels."""
    n, labels = cv2.connectedComponents(join.astype(np.uint8), connectivity=8)
    out = []
    for k in range(1, n):
        ys, xs = np.nonzero((labels == k) & mask)
        if len(xs) == 0:
            continue
        out.append(((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), len(xs)))
    return out


def _in_lane(box: tuple[int, int, int, int], lane: np.ndarray | None) -> bool:
    if lane is None:
        return True
    x1, y1, x2, y2 = box
    return bool(lane[y1:y2, x1:x2].any())


def pothole_boxes(mask: np.ndarray, lane: np.ndarray | None = None) -> list[MaskBox]:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (POTHOLE_GAP, POTHOLE_GAP))
    closed = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool) | mask
    boxes = []
    for box, pixels in _components(mask, closed):
        w, h = box[2] - box[0], box[3] - box[1]
        if pixels >= POTHOLE_MIN_AREA and min(w, h) >= POTHOLE_MIN_SIDE:
            boxes.append(MaskBox(0, tuple(map(float, box)), pixels, _in_lane(box, lane)))
    return boxes


def crack_boxes(mask: np.ndarray, lane: np.ndarray | None = None) -> list[MaskBox]:
    r = CRACK_GAP // 2
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    grown = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
    boxes = []
    for box, pixels in _components(mask, grown):
        if max(box[2] - box[0], box[3] - box[1]) >= CRACK_MIN_LENGTH:
            boxes.append(MaskBox(1, tuple(map(float, box)), pixels, _in_lane(box, lane)))
    return boxes


def boxes_for(root: Path, stem: str) -> list[MaskBox]:
    """Every pothole and crack box of one image of the survey set (root holds images/ and masks/)."""
    lane = read_mask(root / "masks" / "lane" / f"{stem}.png")
    out: list[MaskBox] = []
    pothole = read_mask(root / "masks" / "pothole" / f"{stem}.png")
    if pothole is not None:
        out += pothole_boxes(pothole, lane)
    crack = read_mask(root / "masks" / "crack" / f"{stem}.png")
    if crack is not None:
        out += crack_boxes(crack, lane)
    return out


def highway_of(name: str) -> str:
    """`<n>_<state>_<road>_...` -> `<state>_<road>`, e.g. 1044259_DF_060_... -> DF_060."""
    parts = Path(name).stem.split("_")
    if len(parts) < 3:
        raise ValueError(f"{name}: not a survey image name (<n>_<state>_<road>_...)")
    return f"{parts[1]}_{parts[2]}"


COLOURS = {0: (0, 0, 255), 1: (0, 200, 255)}  # BGR: potholes red, cracks amber


def contact_sheet(root: Path, stems: list[str], out: Path, columns: int = 4, tile_width: int = 480) -> Path:
    """The boxes drawn over the images (masks tinted underneath), a grid of tiles, to look at the rules."""
    tiles = []
    for stem in stems:
        img = cv2.imread(str(root / "images" / f"{stem}.jpg"), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"unreadable image {root / 'images' / stem}.jpg")
        for cls, name in enumerate(CLASSES):
            m = read_mask(root / "masks" / name / f"{stem}.png")
            if m is not None:
                img[m] = (0.5 * img[m] + 0.5 * np.array(COLOURS[cls])).astype(np.uint8)
        for b in boxes_for(root, stem):
            x1, y1, x2, y2 = (round(v) for v in b.box)
            cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), COLOURS[b.cls], 2)
        cv2.putText(img, stem[:28], (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        r = tile_width / img.shape[1]
        tile = cv2.resize(img, (tile_width, round(img.shape[0] * r)), interpolation=cv2.INTER_AREA)
        tiles.append(cv2.resize(tile, (tile_width, round(tile_width * 0.62))))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return out


def write_yolo_split(root: Path, stems: list[str], dest: Path) -> Path:
    """A YOLO-layout folder (images/ as symlinks, labels/ from the masks) for `edge-agent model eval`."""
    import shutil

    shutil.rmtree(dest, ignore_errors=True)
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir()
    for stem in stems:
        img = (root / "images" / f"{stem}.jpg").resolve()
        (dest / "images" / img.name).symlink_to(img)
        h, w = cv2.imread(str(img), cv2.IMREAD_GRAYSCALE).shape[:2]
        lines = [f"{b.cls} {(b.box[0] + b.box[2]) / 2 / w:.6f} {(b.box[1] + b.box[3]) / 2 / h:.6f} "
                 f"{(b.box[2] - b.box[0]) / w:.6f} {(b.box[3] - b.box[1]) / h:.6f}" for b in boxes_for(root, stem)]
        (dest / "labels" / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
    return dest
