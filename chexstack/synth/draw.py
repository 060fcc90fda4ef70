"""Drawing synthetic chest radiographs: numpy shapes for the anatomy and for each finding.

Nothing here is real patient data: the anatomy is drawn from a handful of shapes, and the findings
change the pixels where a radiologist would look for them, so a model trained on this data has
something to learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from chexstack.labels import LABELS


def _smoothstep(x: np.ndarray) -> np.ndarray:
    c: np.ndarray = np.clip(x, 0.0, 1.0)
    out: np.ndarray = c * c * (3.0 - 2.0 * c)
    return out


@lru_cache(maxsize=32)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells + 1) weights that smoothly interpolate a coarse grid to size samples."""
    pos = (np.arange(size, dtype=np.float64) + 0.5) / size * cells
    i0 = np.clip(np.floor(pos).astype(int), 0, cells - 1)
    t = pos - i0
    t = t * t * (3 - 2 * t)
    m = np.zeros((size, cells + 1), dtype=np.float32)
    m[np.arange(size), i0] = 1 - t
    m[np.arange(size), i0 + 1] = t
    return m


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1] with about `cells` blobs across; two matrix products, so it is cheap."""
    grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
    m = _interp_matrix(size, cells)
    out: np.ndarray = m @ grid @ m.T
    return out


@dataclass
class _Anatomy:
    """One synthetic patient's geometry and densities, in image fractions (0..1 across the image)."""

    cx: float
    half_width: float  # thorax half-width
    mediastinum: float  # half-width of the mediastinum at the lung's medial border
    apex: float  # y of the lung apices
    apex_len: float  # how far down the apex rounds out to full width
    dome: list[float]  # y of each hemidiaphragm's top (0 = image left = patient right)
    dome_depth: list[float]  # how far the costophrenic angle lies below the dome top
    heart: list[float]  # cx, cy, rx, ry
    hila_y: float
    body: float
    air: float  # how much darker an aerated lung is than soft tissue
    markings: float
    rib_spacing: float
    rib_first: float
    rib_tilt: float
    bone: float
    atelectasis_side: int = 0


def _anatomy(rng: np.random.Generator) -> _Anatomy:
    u = rng.uniform
    dome_r = u(0.66, 0.70)
    return _Anatomy(
        cx=0.5 + u(-0.015, 0.015),
        half_width=u(0.33, 0.37),
        mediastinum=u(0.055, 0.07),
        apex=u(0.12, 0.155),
        apex_len=u(0.12, 0.17),
        dome=[dome_r, dome_r + u(0.01, 0.03)],
        dome_depth=[u(0.06, 0.08), u(0.06, 0.08)],
        heart=[u(0.045, 0.06), u(0.085, 0.1), u(0.13, 0.145), u(0.1, 0.115)],  # dx from cx, dy above dome
        hila_y=u(0.40, 0.45),
        body=u(0.50, 0.58),
        air=u(0.34, 0.40),
        markings=u(0.05, 0.08),
        rib_spacing=u(0.05, 0.058),
        rib_first=u(0.1, 0.13),
        rib_tilt=u(0.10, 0.14),
        bone=u(0.07, 0.1),
    )


class _Canvas:
    """Coordinate grids and the lung geometry shared by the anatomy and every finding."""

    def __init__(self, anat: _Anatomy, size: int) -> None:
        self.a = anat
        self.size = size
        coords = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
        self.y = coords[:, None]
        self.x = coords[None, :]
        self.edge = 1.2 / size  # soft edges about a pixel wide avoid aliasing

    def soft(self, margin: np.ndarray) -> np.ndarray:
        """Mask from a signed distance (positive inside)."""
        return np.clip(margin / self.edge + 0.5, 0.0, 1.0)

    def sign(self, side: int) -> float:
        return -1.0 if side == 0 else 1.0

    def lung_width(self) -> float:
        return self.a.half_width * 0.93 - self.a.mediastinum

    def u(self, side: int) -> np.ndarray:
        """0 at the lung's medial border, 1 at its lateral border; the mediastinum widens downward."""
        a = self.a
        medial = a.mediastinum + 0.025 * _smoothstep((self.y - 0.35) / 0.25)
        out: np.ndarray = ((self.x - a.cx) * self.sign(side) - medial) / self.lung_width()
        return out

    def point(self, side: int, u: float, v: float) -> tuple[float, float]:
        """(y, x) of lung coordinates u (medial->lateral) and v (apex->dome)."""
        a = self.a
        x = a.cx + self.sign(side) * (a.mediastinum + u * self.lung_width())
        return a.apex + v * (a.dome[side] - a.apex), x

    def dome_y(self, side: int, u: np.ndarray) -> np.ndarray:
        a = self.a
        lateral = np.clip((u - 0.35) / 0.65, 0.0, None)
        medial = np.clip(0.35 - u, 0.0, None)
        return a.dome[side] + a.dome_depth[side] * lateral * lateral + 0.1 * medial * medial

    def lung_margin(self, side: int, lat_scale: float = 1.0, apex_shift: float = 0.0) -> np.ndarray:
        """Approximate signed distance to one lung's border (positive inside)."""
        a = self.a
        u = self.u(side)
        w = self.lung_width()
        m = np.minimum(u * w, self.lateral_margin(side, lat_scale, apex_shift))
        m = np.minimum(m, self.y - a.apex - apex_shift - 0.05 * (u - 0.3) ** 2)  # rounded apex
        out: np.ndarray = np.minimum(m, self.dome_y(side, u) - self.y)
        return out

    def lateral_margin(self, side: int, lat_scale: float = 1.0, apex_shift: float = 0.0) -> np.ndarray:
        """Distance inside the lateral chest wall, which curves in toward the apex."""
        a = self.a
        reach = np.sqrt(np.clip((self.y - a.apex - apex_shift) / a.apex_len, 0.0, 1.0)) * lat_scale
        out: np.ndarray = (reach - self.u(side)) * self.lung_width()
        return out

    def disk(self, cy: float, cx: float, r: float | np.ndarray, ry: float | None = None) -> np.ndarray:
        """Soft ellipse (circle when ry is None) mask."""
        ry_ = r if ry is None else ry
        d = np.sqrt(((self.x - cx) / r) ** 2 + ((self.y - cy) / ry_) ** 2)
        return self.soft((1.0 - d) * np.minimum(r, ry_))

    def polar(self, cy: float, cx: float) -> tuple[np.ndarray, np.ndarray]:
        dy, dx = self.y - cy, self.x - cx
        return np.sqrt(dx * dx + dy * dy), np.arctan2(dy, dx)


@dataclass
class _Layers:
    """What the findings change: additive density, air filled by fluid/tissue, and geometry tweaks."""

    dense: np.ndarray
    fill: np.ndarray
    extra_air: np.ndarray
    marking_mask: list[np.ndarray | None] = field(default_factory=lambda: [None, None])


def _geometry_findings(anat: _Anatomy, findings: set[str], rngs: dict[str, np.random.Generator]) -> None:
    """Findings that change the anatomy itself are applied before drawing."""
    if "Cardiomegaly" in findings:
        r = rngs["Cardiomegaly"]
        anat.heart[2] *= r.uniform(1.4, 1.6)  # cardiothoracic ratio from ~0.45 to ~0.65
        anat.heart[3] *= r.uniform(1.15, 1.25)
    if "Emphysema" in findings:
        r = rngs["Emphysema"]
        anat.dome = [d + r.uniform(0.05, 0.07) for d in anat.dome]
        anat.dome_depth = [d * 0.3 for d in anat.dome_depth]  # flattened diaphragm
        anat.apex -= 0.015
        anat.half_width += 0.015
        anat.air += r.uniform(0.07, 0.1)  # hyperlucent
        anat.markings *= 0.35
    if "Atelectasis" in findings:
        r = rngs["Atelectasis"]
        anat.atelectasis_side = side = int(r.integers(2))
        anat.dome[side] -= r.uniform(0.035, 0.055)  # volume loss pulls the hemidiaphragm up
    if "Fibrosis" in findings:
        anat.dome = [d - 0.02 for d in anat.dome]  # fibrotic lungs are small


def _draw_findings(
    cv: _Canvas, lungs: list[np.ndarray], findings: set[str], rngs: dict[str, np.random.Generator]
) -> _Layers:
    n = cv.size
    zeros = np.zeros((n, n), dtype=np.float32)
    lay = _Layers(dense=zeros.copy(), fill=zeros.copy(), extra_air=zeros.copy())
    a = cv.a
    both = np.maximum(lungs[0], lungs[1])

    def add_fill(mask: np.ndarray) -> None:
        np.maximum(lay.fill, mask, out=lay.fill)

    if "Effusion" in findings:
        r = rngs["Effusion"]
        side = int(r.integers(2))
        u = cv.u(side)
        top = a.dome[side] - r.uniform(0.04, 0.12)
        level = top - 0.07 * np.clip(u, 0.0, 1.0) ** 2  # meniscus climbs the lateral chest wall
        fluid = _smoothstep((cv.y - level) / 0.03) * lungs[side]
        add_fill(fluid * 0.95)
    if "Nodule" in findings:
        r = rngs["Nodule"]
        side = int(r.integers(2))
        cy, cx = cv.point(side, r.uniform(0.3, 0.8), r.uniform(0.2, 0.7))
        lay.dense += cv.disk(cy, cx, r.uniform(0.011, 0.018)) * r.uniform(0.2, 0.28)
    if "Mass" in findings:
        r = rngs["Mass"]
        side = int(r.integers(2))
        cy, cx = cv.point(side, r.uniform(0.35, 0.7), r.uniform(0.25, 0.65))
        rad, ang = cv.polar(cy, cx)
        p1, p2 = r.uniform(0, 2 * np.pi, 2)
        radius = r.uniform(0.04, 0.06) * (1 + 0.12 * np.sin(3 * ang + p1) + 0.08 * np.sin(5 * ang + p2))
        lay.dense += cv.soft((radius - rad) * 0.7) * r.uniform(0.25, 0.32)
    if "Pneumothorax" in findings:
        r = rngs["Pneumothorax"]
        side = int(r.integers(2))
        collapsed = cv.lung_margin(side, lat_scale=r.uniform(0.62, 0.8), apex_shift=r.uniform(0.05, 0.09))
        inner = cv.soft(collapsed)
        gap = lungs[side] * (1.0 - inner)
        lay.extra_air += gap * 0.06  # no lung tissue in the gap: darker than aerated lung
        lay.marking_mask[side] = inner  # and no vessel markings beyond the pleural line
        line = np.exp(-((collapsed / (1.3 / n)) ** 2)) * lungs[side]
        lay.dense += line * 0.16
    if "Consolidation" in findings:
        r = rngs["Consolidation"]
        side = int(r.integers(2))
        lower = bool(r.integers(2))
        u, v0 = cv.u(side), r.uniform(0.45, 0.55)
        fissure_y = a.apex + v0 * (a.dome[side] - a.apex) - 0.08 * u  # oblique fissure, sharp border
        lobe = cv.soft((cv.y - fissure_y) if lower else (fissure_y - cv.y))
        patch = _smoothstep((_noise(r, n, 6) - 0.08) / 0.2)  # dense and nearly homogeneous
        add_fill(lobe * patch * lungs[side] * 0.9)
        hy, hx = cv.point(side, 0.05, 0.5)
        rad, ang = cv.polar(hy, hx)
        bronchi = _smoothstep((np.cos(ang * 28 + 2 * np.sin(rad * 30)) - 0.85) / 0.15)
        lay.extra_air += bronchi * lobe * patch * lungs[side] * 0.12  # air bronchograms
    if "Pneumonia" in findings:
        r = rngs["Pneumonia"]
        side = int(r.integers(2))
        cy, cx = cv.point(side, r.uniform(0.4, 0.7), r.uniform(0.5, 0.85))
        region = cv.disk(cy, cx, r.uniform(0.09, 0.13))
        mottled = _smoothstep((_noise(r, n, 28) - 0.35) / 0.3)
        add_fill(region * mottled * lungs[side] * 0.75)
    if "Infiltration" in findings:
        r = rngs["Infiltration"]
        haze = _smoothstep((_noise(r, n, 10) - 0.55) / 0.25)
        add_fill(haze * both * r.uniform(0.35, 0.5))
    if "Edema" in findings:
        r = rngs["Edema"]
        bat = np.zeros((n, n), dtype=np.float32)
        for side in (0, 1):
            hy, hx = cv.point(side, 0.15, 0.45)
            d2 = ((cv.x - hx) / 0.16) ** 2 + ((cv.y - hy) / 0.2) ** 2
            bat = np.maximum(bat, np.exp(-d2))
        add_fill(bat * both * r.uniform(0.55, 0.7))
        kerley = (np.abs(np.sin(cv.y * np.float32(np.pi / 0.018))) < 0.25).astype(np.float32)
        base = np.maximum(
            *(_smoothstep((cv.u(s) - 0.8) / 0.1) * _smoothstep((cv.y - 0.55) / 0.05) for s in (0, 1))
        )
        lay.dense += kerley * base * both * 0.08  # Kerley B lines at the lateral bases
    if "Fibrosis" in findings:
        r = rngs["Fibrosis"]
        net = np.zeros((n, n), dtype=np.float32)
        for _ in range(2):
            f = _noise(r, n, 22)
            net = np.maximum(net, np.exp(-(((f - 0.5) / 0.035) ** 2)))
        zone = np.maximum(*(np.clip(cv.u(s), 0, 1) ** 0.5 for s in (0, 1))) * _smoothstep((cv.y - 0.3) / 0.35)
        lay.dense += net * zone * both * r.uniform(0.14, 0.2)
    if "Pleural_Thickening" in findings:
        r = rngs["Pleural_Thickening"]
        for side in (0, 1) if r.random() < 0.5 else (int(r.integers(2)),):
            thick = r.uniform(0.014, 0.022) * (0.6 + 0.8 * _noise(r, n, 8))  # lumpy, not a smooth band
            rim = (
                cv.soft(thick - cv.lateral_margin(side)) * lungs[side] * _smoothstep((cv.u(side) - 0.4) / 0.2)
            )
            lay.dense += rim * r.uniform(0.28, 0.34)
    if "Atelectasis" in findings:
        r = rngs["Atelectasis"]
        side = a.atelectasis_side  # the wedge is on the side that lost volume
        hy, hx = cv.point(side, 0.0, 0.5)
        rad, ang = cv.polar(hy, hx)
        lateral = 0.0 if side == 1 else np.pi
        toward = lateral + (1 if side == 1 else -1) * r.uniform(0.35, 0.8)  # down and out
        diff = np.abs(np.angle(np.exp(1j * (ang - toward))))
        half = r.uniform(0.18, 0.28)
        wedge = cv.soft((half - diff) * rad) * cv.soft(0.5 - rad)
        add_fill(wedge * lungs[side] * 0.9)
    if "Hernia" in findings:
        r = rngs["Hernia"]
        rad_h = r.uniform(0.05, 0.07)
        cy, cx = a.dome[1] - rad_h * 0.7, a.cx + r.uniform(-0.02, 0.03)
        sac = cv.disk(cy, cx, rad_h * 1.15, rad_h)
        level = cy + r.uniform(-0.01, 0.015)
        gas = sac * cv.soft(level - cv.y)
        rim = sac * (1.0 - cv.disk(cy, cx, rad_h * 1.15 - 2.5 / n, rad_h - 2.5 / n))
        lay.dense += sac * 0.1 + rim * 0.12
        lay.extra_air += gas * 0.3  # retrocardiac gas bubble with an air-fluid level
    return lay


def render_radiograph(rng: np.random.Generator, findings: Sequence[str], size: int = 512) -> np.ndarray:
    """A synthetic PA chest radiograph, float32 in [0, 1] (bone white, air black), size x size.

    The same generator state and size give the same anatomy with or without a finding: anatomy, each
    finding and the noise draw from separate streams, so adding a finding changes only its pixels.
    """
    unknown = set(findings) - set(LABELS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}: expected names from chexstack.labels.LABELS")
    anat_rng, find_rng, noise_rng = rng.spawn(3)
    rngs = dict(zip(LABELS, find_rng.spawn(len(LABELS)), strict=True))
    anat = _anatomy(anat_rng)
    fset = set(findings)
    _geometry_findings(anat, fset, rngs)
    # The heart sits on the left hemidiaphragm and an enlarged one grows mostly to the patient's left.
    anat.heart[0] = anat.cx + anat.heart[0] + 0.35 * (anat.heart[2] - 0.14)
    anat.heart[1] = anat.dome[1] - anat.heart[1]
    cv = _Canvas(anat, size)
    y, x, n = cv.y, cv.x, size

    # Torso outline: neck widening into the shoulders, then the chest wall.
    shoulder = _smoothstep((y - 0.02) / 0.14)
    torso_half = 0.08 + (anat.half_width + 0.1 - 0.08) * shoulder
    torso = cv.soft(torso_half - np.abs(x - anat.cx)) * cv.soft(y + 0.5)
    arms = cv.soft(0.06 - np.abs(np.abs(x - anat.cx) - anat.half_width - 0.17)) * _smoothstep(
        (y - 0.12) / 0.1
    )
    img = 0.03 + torso * anat.body + arms * 0.35

    lungs = [cv.soft(cv.lung_margin(s)) for s in (0, 1)]
    lung = np.maximum(lungs[0], lungs[1])
    hx, hy, hrx, hry = anat.heart
    heart = cv.disk(hy, hx, hrx, hry) * cv.soft(anat.dome[1] + 0.03 - y)
    aorta = cv.disk(0.3, anat.cx + 0.045, 0.035, 0.03)
    lay = _draw_findings(cv, lungs, fset, rngs)
    np.maximum(lay.fill, heart * 0.9, out=lay.fill)
    np.maximum(lay.fill, aorta * 0.8, out=lay.fill)

    # Vessel markings radiate from each hilum and fade toward the periphery.
    markings = np.zeros((n, n), dtype=np.float32)
    wiggle = _noise(noise_rng, n, 12) * 6.0
    for s in (0, 1):
        hy_s, hx_s = anat.hila_y, anat.cx + cv.sign(s) * (anat.mediastinum + 0.035)
        rad, ang = cv.polar(hy_s, hx_s)
        streak = np.cos(ang * 34.0 + wiggle) * 0.5 + np.cos(ang * 13.0 - wiggle * 0.7) * 0.5
        vessels = (
            _smoothstep((streak - 0.35) / 0.5) * np.exp(-rad / 0.16) * (1.0 - np.exp(-((rad / 0.05) ** 2)))
        )
        hilum = np.exp(-((rad / 0.045) ** 2)) * 0.7
        mask = lungs[s] if lay.marking_mask[s] is None else lungs[s] * lay.marking_mask[s]
        markings += (vessels + hilum) * mask

    # Air varies a little across the lungs; breast and muscle overlap makes the bases less dark.
    air = anat.air * (0.9 + 0.2 * _noise(noise_rng, n, 4)) * (1.0 - 0.12 * _smoothstep((y - 0.45) / 0.25))
    aerated = lung * (1.0 - lay.fill)
    img = (
        img
        - air * aerated
        + heart * 0.04
        - lay.extra_air * lung
        + anat.markings * markings * (1.0 - lay.fill)
    )

    # Bones: posterior ribs (arched bands found with one modulo), clavicles, spine.
    t = np.abs(x - anat.cx) / anat.half_width
    phase = (y - anat.rib_first + anat.rib_tilt * t - 0.2 * t * t) / anat.rib_spacing
    rib_idx = np.floor(phase)
    frac = phase - rib_idx
    ribs = (np.exp(-(((frac - 0.5) / 0.16) ** 2)) * 0.8 + np.exp(-(((frac - 0.5) / 0.2) ** 8)) * 0.4) * (
        (rib_idx >= 0) & (rib_idx < 10) & (t > 0.08) & (t < 1.02)
    )
    ribs = ribs * cv.soft(anat.dome[0] + 0.09 - y)
    clav_y = anat.apex + 0.005 - 0.06 * t
    clavicle = np.exp(-(((y - clav_y) / 0.011) ** 2)) * ((t > 0.1) & (t < 0.95))
    spine_w = 0.028
    spine = cv.soft(spine_w - np.abs(x - anat.cx)) * (
        0.7 + 0.3 * (np.abs(np.sin(y * np.float32(np.pi / 0.045))) > 0.2)
    )
    trachea = cv.soft(0.011 - np.abs(x - anat.cx)) * cv.soft(0.34 - y) * cv.soft(y - 0.02)
    bubble = cv.disk(anat.dome[1] + 0.07, anat.cx + 0.17, 0.04, 0.025)  # gastric air under the left dome
    img = img + anat.bone * (ribs + clavicle * 1.4 + spine * 1.2) - trachea * 0.14 - bubble * 0.12
    img = img + lay.dense * torso

    # Exposure falls off toward the edges; detector noise on top.
    img = img * (1.0 - 0.08 * ((x - 0.5) ** 2 + (y - 0.5) ** 2) * 4)
    img = img + noise_rng.standard_normal((n, n), dtype=np.float32) * 0.008
    out: np.ndarray = np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)
    return out
