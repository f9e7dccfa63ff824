"""The road surface as a function of road coordinates: s metres along the road, d metres left of its centre line.

Everything the surface needs per scene (colours, textures, lane layout) lives in a `RoadStyle` drawn from an
rng, so a drive looks the same from frame to frame and training scenes vary. Textures are looked up with
cv2.remap on (s, d), which keeps a frame at a few milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

_GRAIN_PX = 256
_PATCH_PX = 64
_WHITE = np.array([235, 235, 235], np.float32)


def _tileable_noise(rng: np.random.Generator, size: int, blur_px: float) -> np.ndarray:
    """Zero-mean, unit-std noise that wraps at its edges (blurred with a wrapping border)."""
    noise: np.ndarray = rng.standard_normal((size, size)).astype(np.float32)  # a float32 blur result replaces it
    if blur_px > 0:
        pad = math.ceil(blur_px * 4)
        wrapped = np.pad(noise, pad, mode="wrap")
        noise = cv2.GaussianBlur(wrapped, (0, 0), blur_px)[pad:-pad, pad:-pad]
    noise -= noise.mean()
    return noise / (noise.std() + 1e-6)


_BANK_SIZE = 8
_bank: dict[tuple[int, float], list[np.ndarray]] = {}


def _bank_noise(rng: np.random.Generator, size: int, blur_px: float) -> np.ndarray:
    """A tileable noise texture from a fixed bank, randomly flipped/transposed: drawing fresh noise for every
    training scene would cost more than rendering it. The bank is seeded, so results stay deterministic."""
    key = (size, blur_px)
    if key not in _bank:
        bank_rng = np.random.default_rng([size, int(blur_px * 100)])
        _bank[key] = [_tileable_noise(bank_rng, size, blur_px) for _ in range(_BANK_SIZE)]
    tex = _bank[key][int(rng.integers(_BANK_SIZE))]
    k = int(rng.integers(8))
    if k & 1:
        tex = tex[::-1]
    if k & 2:
        tex = tex[:, ::-1]
    if k & 4:
        tex = tex.T
    return np.ascontiguousarray(tex)


@dataclass
class RoadStyle:
    """One road's look. d = 0 is the centre line; vehicles drive on the right, so the ego lane is at
    d = -lane_width/2 with `lanes_per_side` lanes each way."""

    lane_width: float
    lanes_per_side: int
    asphalt_bgr: np.ndarray          # (3,) mean colour 0-255
    grain_amp: float                 # fine texture strength (fraction of the colour)
    grain_scale_m: float             # metres per grain texel
    patch_amp: float                 # low-frequency blotches strength
    patch_scale_m: float
    grain: np.ndarray                # tileable noise, fine
    patches: np.ndarray              # tileable noise, coarse
    shadow: np.ndarray               # tileable mask 0..1 (1 = in shadow)
    shadow_strength: float           # 0 = no shadows
    shadow_scale_m: float
    centre_colour: np.ndarray        # white or yellow
    marking_brightness: float
    marking_wear: float              # 0 = fresh paint, 1 = nearly gone
    centre_dashed: bool
    dash_len_m: float
    dash_period_m: float
    line_width_m: float
    verge: str                       # "grass", "gravel" or "curb"
    verge_bgr: np.ndarray
    shoulder_m: float                # asphalt outside the edge line
    haze_bgr: np.ndarray
    haze_range_m: float

    @property
    def road_half_width(self) -> float:
        return self.lane_width * self.lanes_per_side + self.shoulder_m

    @property
    def ego_lane_centre(self) -> float:
        return -self.lane_width / 2

    def marking_offsets(self) -> list[float]:
        """d of every painted line: centre, lane dividers, edge lines."""
        edge = self.road_half_width - self.shoulder_m
        lines = [0.0, edge, -edge]
        for k in range(1, self.lanes_per_side):
            lines += [k * self.lane_width, -k * self.lane_width]
        return lines

    def clear_of_markings(self, d: float, radius: float) -> bool:
        """True when a disc of `radius` at d touches no painted line (a pothole there would leave the paint
        showing through it, darkened, which real ones never do)."""
        return all(abs(d - line) > radius + self.line_width_m / 2 + 0.05 for line in self.marking_offsets())


def random_style(rng: np.random.Generator) -> RoadStyle:
    gray = rng.uniform(60, 140)
    tint = rng.uniform(-6, 6, 3)
    verge = str(rng.choice(["grass", "gravel", "curb"], p=[0.45, 0.25, 0.30]))
    verge_bgr = {
        "grass": np.array([rng.uniform(30, 70), rng.uniform(80, 130), rng.uniform(60, 100)]),
        "gravel": np.array([rng.uniform(100, 150)] * 3) + rng.uniform(-10, 10, 3),
        "curb": np.array([rng.uniform(140, 190)] * 3) + rng.uniform(-5, 5, 3),
    }[verge]
    yellow = rng.random() < 0.2
    return RoadStyle(
        lane_width=float(rng.uniform(2.9, 3.75)),
        lanes_per_side=int(rng.choice([1, 1, 1, 2])),
        asphalt_bgr=np.clip(gray + tint, 30, 200).astype(np.float32),
        grain_amp=float(rng.uniform(0.06, 0.16)),
        grain_scale_m=float(rng.uniform(0.008, 0.02)),
        patch_amp=float(rng.uniform(0.04, 0.14)),
        patch_scale_m=float(rng.uniform(0.2, 0.8)),
        grain=_bank_noise(rng, _GRAIN_PX, 0.7),
        patches=_bank_noise(rng, _PATCH_PX, 2.0),
        shadow=np.clip(_bank_noise(rng, _PATCH_PX, 4.0) * 3.0 - rng.uniform(0.0, 2.0), 0, 1),
        shadow_strength=float(rng.uniform(0.3, 0.6)) if rng.random() < 0.35 else 0.0,
        shadow_scale_m=float(rng.uniform(0.6, 1.5)),
        centre_colour=np.array([40, 190, 230], np.float32) if yellow else _WHITE.copy(),
        marking_brightness=float(rng.uniform(0.75, 1.0)),
        marking_wear=float(rng.uniform(0.0, 0.7)),
        centre_dashed=bool(rng.random() < 0.75),
        dash_len_m=float(rng.uniform(2.5, 4.0)),
        dash_period_m=float(rng.uniform(8.0, 12.0)),
        line_width_m=float(rng.uniform(0.1, 0.15)),
        verge=verge,
        verge_bgr=verge_bgr.astype(np.float32),
        shoulder_m=float(rng.uniform(0.2, 0.8)),
        haze_bgr=np.array([rng.uniform(170, 230)] * 3, np.float32) + rng.uniform(-10, 10, 3).astype(np.float32),
        haze_range_m=float(rng.uniform(120, 400)),
    )


def _wrap(x: np.ndarray, period: int) -> np.ndarray:
    """x mod period for float32 arrays (np.mod is several times slower than floor arithmetic)."""
    p = np.float32(period)
    x -= np.floor(x * (1 / p)) * p
    return x


def _lookup(tex: np.ndarray, s: np.ndarray, d: np.ndarray, scale_m: float) -> np.ndarray:
    """Sample a tileable texture at road coordinates (metres), wrapping. Coordinates are wrapped into the texture
    first: remap's own BORDER_WRAP takes a slow path for every pixel outside it."""
    h, w = tex.shape[:2]
    inv = np.float32(1.0 / scale_m)
    mx = _wrap(s * inv, w)
    my = _wrap(d * inv, h)
    return cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)


def _band(dist: np.ndarray, half_width: float, inv_footprint: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a band |dist| < half_width by a pixel (1 / inv_footprint metres wide)."""
    cover = (np.float32(half_width) - np.abs(dist)) * inv_footprint + np.float32(0.5)
    return np.clip(cover, 0.0, 1.0, out=cover)


def _dashes(s: np.ndarray, style: RoadStyle, inv_footprint: np.ndarray) -> np.ndarray:
    period = np.float32(style.dash_period_m)
    phase = s - np.floor(s * (1 / period)) * period
    dash = np.float32(style.dash_len_m)
    inside = np.minimum(phase, dash - phase)
    outside = np.minimum(phase - dash, np.float32(style.dash_period_m) - phase)
    dist = np.where(phase < dash, inside, -outside)
    return np.clip(dist * inv_footprint + np.float32(0.5), 0.0, 1.0)


def texture_gains(style: RoadStyle, inv_fp_along: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel strength of the fine grain and of the verge's blotches: texture fades where a pixel covers many
    texels, as a real camera would average it away (and as point-sampling it would alias into noise). Depends
    only on the camera, so a drive computes it once."""
    grain = np.clip(inv_fp_along * np.float32(3 * style.grain_scale_m), 0.25, 1.0) * np.float32(style.grain_amp)
    blotch = np.clip(inv_fp_along * np.float32(2 * style.patch_scale_m), 0.1, 1.0) * np.float32(0.2)
    return grain, blotch


def _sparse(cover: np.ndarray, fn) -> np.ndarray:
    """cover * fn(indices) evaluated only where cover > 0 (lines cover a few percent of the image)."""
    idx = np.flatnonzero(cover)
    flat = cover.reshape(-1)
    flat[idx] *= fn(idx)
    return cover


def shade_surface(style: RoadStyle, s: np.ndarray, d: np.ndarray, inv_fp_across: np.ndarray,
                  inv_fp_along: np.ndarray, gains: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> list[np.ndarray]:
    """The road surface's colour at each pixel's (s, d) (float32 metres) as three float32 planes (B, G, R);
    the inverse footprints (pixels per metre across and along the road) anti-alias the markings; `gains` are
    `texture_gains` when precomputed. Planes, not an HxWx3 array: numpy broadcasting over a trailing axis of 3 is
    several times slower."""
    grain = _lookup(style.grain, s, d, style.grain_scale_m)
    patches = _lookup(style.patches, s, d, style.patch_scale_m)
    gain, blotch = texture_gains(style, inv_fp_along) if gains is None else gains
    lum = grain * gain + patches * np.float32(style.patch_amp) + np.float32(1.0)

    half = style.road_half_width
    abs_d = np.abs(d)
    verge = _band(abs_d - np.float32(half + 50.0), 50.0, inv_fp_across)
    if style.verge == "curb":
        verge *= _band(abs_d - np.float32(half + 0.1), 0.1, inv_fp_across) * np.float32(0.15) + np.float32(0.85)
        verge_lum = grain * gain + np.float32(1.0)
    else:
        verge_lum = grain * (gain * np.float32(2.0)) + patches * blotch + np.float32(1.0)
    lum += verge * (verge_lum - lum)

    # Markings: edge lines (solid, white) and the centre line (dashed or solid), worn by a noise mask.
    wear = np.clip(np.float32(1.0 - 0.6 * style.marking_wear) - patches * np.float32(0.6 * style.marking_wear),
                   0.0, 1.0) * np.float32(style.marking_brightness)
    edge_d = np.float32(half - style.shoulder_m)
    lw = style.line_width_m / 2
    white = _band(abs_d - edge_d, lw, inv_fp_across)
    centre = _band(d, lw, inv_fp_across)
    s_flat, fp_flat = s.reshape(-1), inv_fp_along.reshape(-1)

    def dashes(idx: np.ndarray) -> np.ndarray:
        return _dashes(s_flat[idx], style, fp_flat[idx])

    if style.centre_dashed:
        centre = _sparse(centre, dashes)
    for k in range(1, style.lanes_per_side):
        lane_line = _sparse(_band(abs_d - np.float32(k * style.lane_width), lw, inv_fp_across), dashes)
        white = np.maximum(white, lane_line)
    yellow_centre = not np.array_equal(style.centre_colour, _WHITE)
    if not yellow_centre:
        white = np.maximum(white, centre)
    white *= wear
    centre *= wear
    planes = []
    for c in range(3):
        asphalt, verge_c = style.asphalt_bgr[c], style.verge_bgr[c]
        plane = (verge * np.float32(verge_c - asphalt) + np.float32(asphalt)) * lum
        if yellow_centre:
            plane += centre * (np.float32(style.centre_colour[c]) - plane)
        plane += white * (np.float32(_WHITE[c]) - plane)
        planes.append(plane)
    return planes


def shadow_factor(style: RoadStyle, s: np.ndarray, d: np.ndarray) -> np.ndarray | None:
    """Multiplicative shading of tree/building shadows cast on the road, or None when the scene has none."""
    if style.shadow_strength <= 0:
        return None
    m = _lookup(style.shadow, s, d, style.shadow_scale_m)
    return np.float32(1.0) - np.float32(style.shadow_strength) * m
