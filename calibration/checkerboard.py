"""Camera intrinsics from checkerboard photos (cv2.findChessboardCorners + cv2.calibrateCamera)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from calibration.camera import Intrinsics
from calibration.config import CalibrationError
from calibration.intrinsics_quality import calibration_problems

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
MIN_VIEWS = 3


@dataclass
class CalibrationResult:
    intrinsics: Intrinsics
    rms_px: float                                    # cv2.calibrateCamera's RMS reprojection error
    per_image_px: dict[str, float]                   # RMS reprojection error of each used image
    rejected: list[str] = field(default_factory=list)  # images where the board was not found
    problems: list[str] = field(default_factory=list)  # why the fit may be wrong despite its RMS (intrinsics_quality)


def parse_board(text: str) -> tuple[int, int]:
    """'9x6' -> (9, 6): inner corners per row and per column."""
    try:
        cols, rows = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise CalibrationError(f"board {text!r}: expected inner corners as COLSxROWS, e.g. 9x6") from None
    if cols < 2 or rows < 2:
        raise CalibrationError(f"board {text!r}: needs at least 2x2 inner corners")
    return cols, rows


def board_points(board: tuple[int, int], square_mm: float) -> np.ndarray:
    """The board's inner corners in its own plane, metres, in OpenCV's corner order (row by row)."""
    cols, rows = board
    grid = np.mgrid[0:cols, 0:rows].T.reshape(-1, 2).astype(np.float32)
    return np.column_stack([grid * (square_mm / 1000.0), np.zeros(len(grid), np.float32)]).astype(np.float32)


def find_corners(gray: np.ndarray, board: tuple[int, int]) -> np.ndarray | None:
    flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
    found, corners = cv2.findChessboardCorners(gray, board, flags=flags)
    if not found:
        return None
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 40, 1e-3)
    return cv2.cornerSubPix(gray, corners, (5, 5), (-1, -1), criteria)


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def other_files(folder: Path) -> list[str]:
    """Files of FOLDER that are not images calibration reads (a phone's .heic photos were skipped unsaid)."""
    return sorted(p.name for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in IMAGE_SUFFIXES)


def _listed(items: list[str], most: int = 5) -> str:
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def common_size(paths: list[Path]) -> tuple[int, int] | None:
    """The (width, height) most of the images have: one photo from another camera or setting must not decide
    against all the others. Read from the headers only."""
    from PIL import Image, UnidentifiedImageError

    sizes: Counter[tuple[int, int]] = Counter()
    for path in paths:
        try:
            with Image.open(path) as img:
                sizes[img.size] += 1
        except (OSError, UnidentifiedImageError):
            continue  # reported as unreadable below
    return sizes.most_common(1)[0][0] if sizes else None


def calibrate_images(paths: Iterable[Path], board: tuple[int, int], square_mm: float,
                     fit_k3: bool = False) -> CalibrationResult:
    """Intrinsics (k1, k2, p1, p2; k3 only with FIT_K3, for wide-angle lenses: free, it ran off on a few
    photos) from photos of a board with `board` inner corners of `square_mm`."""
    paths = list(paths)
    obj = board_points(board, square_mm)
    object_points, image_points, used, rejected = [], [], [], []
    size = common_size(paths)
    if not paths:
        raise CalibrationError("no images to calibrate from (.jpg, .png, .bmp or .tif)")
    for path in paths:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            rejected.append(f"{path.name} (unreadable)")
            continue
        if size is None:  # OpenCV reads it, but no image's header could be read to agree on a size
            rejected.append(f"{path.name} (format not recognised)")
            continue
        if size != (gray.shape[1], gray.shape[0]):
            rejected.append(f"{path.name} (size {gray.shape[1]}x{gray.shape[0]}, expected {size[0]}x{size[1]})")
            continue
        corners = find_corners(gray, board)
        if corners is None:
            rejected.append(f"{path.name} (board not found)")
            continue
        object_points.append(obj)
        image_points.append(corners)
        used.append(path.name)
    if len(used) < MIN_VIEWS or size is None:
        hint = ""
        if not used and sum("board not found" in r for r in rejected) == len(rejected) > 0:
            hint = ("; --board counts the inner corners, where four squares meet (a board of 10x7 squares is "
                    f"--board 9x6): --board {board[0]}x{board[1]} wants one of {board[0] + 1}x{board[1] + 1} squares")
        raise CalibrationError(f"the board was found in {len(used)} image(s); at least {MIN_VIEWS} are needed "
                               f"(rejected: {_listed(rejected) or 'none'}){hint}")
    flags = 0 if fit_k3 else cv2.CALIB_FIX_K3
    rms, k, dist, rvecs, tvecs = cv2.calibrateCamera(object_points, image_points, size, None, None, flags=flags)
    per_image = {}
    for name, o, i, r, t in zip(used, object_points, image_points, rvecs, tvecs, strict=True):
        proj, _ = cv2.projectPoints(o, r, t, k, dist)
        # Both as [N, 2]: OpenCV hands corners back as [N, 1, 2] or [N, 2] by version, and [N, 1, 2] - [N, 2]
        # broadcasts to every corner against every other (hundreds of px for a 0.3 px fit).
        per_image[name] = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - i.reshape(-1, 2)) ** 2, axis=1))))
    intr = Intrinsics(float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]), size[0], size[1],
                      tuple(float(c) for c in dist.ravel()))
    log.debug("calibrated from %d images: rms %.3f px", len(used), rms)
    return CalibrationResult(intr, float(rms), per_image, rejected,
                             calibration_problems(intr, image_points, list(rvecs), float(rms)))
