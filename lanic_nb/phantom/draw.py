"""Rendering of one phantom chest radiograph from its anatomy and planted concepts.

The image is built as a "density" map (higher = more attenuating = whiter on the film) on an
isotropic coordinate grid: x runs -1 (image left = patient RIGHT) to +1, y runs -1 (top) to +1.
Everything is vectorised numpy on broadcast (1, S) x (S, 1) grids, and side-specific work (lungs,
effusion, ...) runs on one half-image per side rather than on the whole grid, which keeps drawing cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Patient side -> image half. A frontal film is viewed as if facing the patient.
SIDE_SIGN = {"right": -1.0, "left": 1.0}

_GLYPHS = {
    "A": ".###.|#...#|#...#|#####|#...#|#...#|#...#",
    "B": "####.|#...#|#...#|####.|#...#|#...#|####.",
    "D": "####.|#...#|#...#|#...#|#...#|#...#|####.",
    "E": "#####|#....|#....|####.|#....|#....|#####",
    "I": "#####|..#..|..#..|..#..|..#..|..#..|#####",
    "L": "#....|#....|#....|#....|#....|#....|#####",
    "O": ".###.|#...#|#...#|#...#|#...#|#...#|.###.",
    "P": "####.|#...#|#...#|####.|#....|#....|#....",
    "R": "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
    "T": "#####|..#..|..#..|..#..|..#..|..#..|..#..",
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.",
    "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####",
    "3": "####.|....#|....#|.###.|....#|....#|####.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.",
    "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": ".###.|#....|#....|####.|#...#|#...#|.###.",
    "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.",
    "9": ".###.|#...#|#...#|.####|....#|....#|.###.",
    "-": ".....|.....|.....|#####|.....|.....|.....",
    ":": ".....|..#..|.....|.....|.....|..#..|.....",
    " ": ".....|.....|.....|.....|.....|.....|.....",
}
_FONT = {
    k: np.array([[c == "#" for c in row] for row in v.split("|")], dtype=bool) for k, v in _GLYPHS.items()
}


@lru_cache(maxsize=64)
def render_text(text: str, scale: int) -> np.ndarray:
    """A boolean bitmap (7*scale, 6*len*scale) of ``text`` in a 5x7 dot-matrix font."""
    cells = [np.pad(_FONT[c], ((0, 0), (0, 1))) for c in text.upper()]
    return np.kron(np.concatenate(cells, axis=1), np.ones((scale, scale), dtype=bool))


@lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates: x (1, S) and y (S, 1), both in (-1, 1)."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1).astype(np.float32)
    return c[None, :], c[:, None]


@lru_cache(maxsize=8)
def _interp_index(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Lattice index below each pixel and the linear weight of the one above."""
    pos = (np.arange(size) + 0.5) / size * (cells - 1)
    lo = np.floor(pos).astype(int).clip(0, cells - 2)
    return lo, (pos - lo).astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(S, S) band-limited noise, roughly unit variance: a (cells x cells) lattice, bilinearly upsampled.

    Separable gathers rather than interpolation matmuls: tiny BLAS calls stall when the cores are busy.
    """
    lo, t = _interp_index(size, cells)
    c = rng.standard_normal((cells, cells), dtype=np.float32)
    rows = c[lo] * (1 - t)[:, None] + c[lo + 1] * t[:, None]  # (S, cells)
    return rows[:, lo] * (1 - t)[None, :] + rows[:, lo + 1] * t[None, :]


def ramp(t: np.ndarray, width: float) -> np.ndarray:
    """Soft step 0 -> 1 over ``width`` (in coordinate units), computed in place when possible."""
    t = np.multiply(t, 1.0 / width, dtype=np.float32)
    return np.clip(t, 0.0, 1.0, out=t)


def line_x_of_y(x: np.ndarray, fx: np.ndarray, width: float) -> np.ndarray:
    """(S, S) soft curve x = f(y): 1 on the curve, fading to 0 at ``width``. fx is (S, 1)."""
    return ramp(width - np.abs(x - fx), width * 0.6)


@dataclass(frozen=True)
class Anatomy:
    """Per-patient (plus per-study jitter) anatomy in grid units; see ``sample_anatomy``."""

    body_half_width: float
    lung_cx: float
    lung_rx: float
    lung_cy: float
    lung_ry: float
    diaphragm_y: float
    dome: float
    heart_x: float
    heart_y: float
    heart_ry: float
    ctr: float
    mediastinum_x: float
    mediastinum_w: float
    spine_w: float
    rib_spacing: float
    rib_phase: float
    rib_curve: float
    clavicle_y: float
    lung_depth: float
    lo: float
    hi: float
    gamma: float
    noise: float


def sample_anatomy(u_patient: np.ndarray, u_study: np.ndarray, extra_rotation: float = 0.0) -> Anatomy:
    """Map 16 patient uniforms and 4 study uniforms to anatomy (habitus, lungs, heart, exposure...).

    ``extra_rotation`` turns a rotated study's patient further (grid units of midline shift)."""
    p, s = u_patient, u_study
    lung_rx = 0.30 + 0.06 * p[1]
    lung_cx = 0.43 + 0.05 * p[2]
    rotation = 0.05 * (s[0] - 0.5) + extra_rotation  # patient rotation shifts midline structures vs the lungs
    inspiration = 0.06 * (s[1] - 0.5)
    return Anatomy(
        body_half_width=0.84 + 0.13 * p[0],
        lung_cx=lung_cx,
        lung_rx=lung_rx,
        lung_cy=-0.05 + 0.05 * p[3],
        lung_ry=0.70 + 0.06 * p[4],
        diaphragm_y=0.50 + 0.08 * p[5] + inspiration,
        dome=0.10 + 0.06 * p[6],
        heart_x=0.07 + 0.05 * p[7] + rotation,
        heart_y=0.17 + 0.06 * p[8],
        heart_ry=0.25 + 0.04 * p[9],
        ctr=0.36 + 0.10 * p[10],
        mediastinum_x=rotation,
        mediastinum_w=0.10 + 0.03 * p[11],
        spine_w=0.06 + 0.015 * p[12],
        rib_spacing=0.17 + 0.04 * p[13],
        rib_phase=float(p[14]),
        rib_curve=0.25 + 0.15 * p[15],
        clavicle_y=-0.62 + 0.06 * s[2],
        lung_depth=0.70 + 0.15 * p[0],
        lo=0.05 + 0.15 * s[3],
        hi=1.85 + 0.3 * p[1],
        gamma=0.8 + 0.4 * p[2],
        noise=0.015 + 0.02 * p[3],
    )


Plants = dict  # concept name -> (side, severity, u): u = six uniforms fixing location/shape details


def _sides(side: str) -> tuple[str, ...]:
    return ("right", "left") if side == "bilateral" else (side,)


def _lung_half(x, y, a: Anatomy, side: str, plants: Plants, noise: np.ndarray):
    """Density contribution of one hemithorax (lung air, opacities, pneumothorax) on its half grid."""
    ax = np.abs(x)  # (1, W): distance from the midline
    dia = a.diaphragm_y
    if "hyperinflation" in plants:
        dia += 0.08 + 0.06 * plants["hyperinflation"][1]
    elev = plants.get("elevated_hemidiaphragm")
    if elev and elev[0] == side:
        dia -= 0.08 + 0.08 * elev[1]
    atel = plants.get("atelectasis")
    if atel and side in _sides(atel[0]):
        dia -= 0.05 + 0.07 * atel[1]  # volume loss pulls the hemidiaphragm up
    dome = a.dome * (0.5 if "hyperinflation" in plants else 1.0)
    ry = a.lung_ry + (0.06 if "hyperinflation" in plants else 0.0)
    u = (ax - a.lung_cx) / a.lung_rx  # (1, W), -1 medial .. +1 lateral
    v = (y - a.lung_cy) / ry  # (S, 1)
    ell = u * u + v * v  # (S, W)
    thorax = ramp(1.0 - ell, 0.12)
    y_dia = dia - dome * np.clip(1.0 - u * u, 0.0, 1.0)  # (1, W): domed hemidiaphragm
    air = thorax * ramp(y_dia - y, 0.03)

    vessels = np.maximum(noise, 0.0) * (0.10 * np.clip(1.2 - 0.8 * np.maximum(u, 0.0), 0.0, 1.0))
    opacity = np.zeros_like(air)
    if (eff := plants.get("pleural_effusion")) and side in _sides(eff[0]):
        sev, uu = eff[1], eff[2]
        level = dia - 0.1 - 0.06 * uu[0] - 0.3 * sev  # fluid top, medially
        top = level - (0.12 + 0.15 * sev) * np.clip(u + 0.3, 0.0, None) ** 2  # meniscus climbs laterally
        fluid = ramp(y - top, 0.04) * thorax
        opacity = np.maximum(opacity, fluid)
        air *= 1.0 - fluid
    if (ed := plants.get("edema")) is not None:
        sev = ed[1]
        hy = a.heart_y - 0.35
        haze = np.clip(
            1.0 - ((ax - 0.22) / 0.32) ** 2 - ((y - hy) / 0.45) ** 2, 0.0, 1.0
        )  # perihilar bat-wing
        kerley = (
            (np.cos(y * (2 * np.pi / 0.05)) > 0.55) * (y > hy) * (u > 0.35)
        )  # short horizontal septal lines
        ed_op = (0.35 + 0.45 * sev) * haze + (0.35 + 0.35 * sev) * kerley
        opacity = np.maximum(opacity, ed_op * air)
        vessels = vessels * (1.0 + 2.0 * sev)
    if (co := plants.get("consolidation")) and co[0] == side:
        sev, uu = co[1], co[2]
        cx = a.lung_cx + (uu[0] - 0.5) * a.lung_rx * 0.8
        cy = -0.45 + 0.8 * uu[1]
        r = 0.2 + 0.14 * sev
        d = (((ax - cx) / 1.3) ** 2 + (y - cy) ** 2) * (1.0 / (r * r))  # lobar: wider than tall
        blob = ramp(1.0 - d + 0.35 * noise, 0.2) * thorax
        # Air bronchograms: dark branching airways, visible only where the alveoli around them are filled.
        theta = np.arctan2(y - (a.heart_y - 0.35), ax - 0.1)
        bronchi = ramp(0.18 - np.abs(np.sin(theta * 9.0 + 6.0 * uu[2])), 0.1) * (ax > cx - 0.5 * r)
        opacity = np.maximum(opacity, blob * (1.0 - 0.55 * bronchi))
    if atel and side in _sides(atel[0]):
        sev, uu = atel[1], atel[2]
        y0 = dia - 0.22 - 0.15 * uu[0]
        dist = np.abs(y - (y0 + (0.15 * uu[1] - 0.05) * u))  # (S, W): distance to a tilted plate
        if sev > 0.5:  # severe: a second plate above the first
            dist = np.minimum(dist, np.abs(y - (y0 - 0.12 + (0.15 * uu[1] - 0.05) * u)))
        plate = ramp((0.03 + 0.03 * sev) - dist, 0.015) * (np.abs(u) < 0.8) * thorax
        opacity = np.maximum(opacity, 0.85 * plate)
    if (no := plants.get("nodule")) and no[0] == side:
        sev, uu = no[1], no[2]
        cx = a.lung_cx + (uu[0] - 0.5) * a.lung_rx
        cy = -0.4 + 0.6 * uu[1]
        r = 0.035 + 0.035 * sev
        nod = ramp(r * r - ((ax - cx) ** 2 + (y - cy) ** 2), r * r * 0.4) * thorax
        opacity = np.maximum(opacity, nod)
    dens = -a.lung_depth * air * (1.0 - opacity) + vessels * air
    if (px := plants.get("pneumothorax")) and px[0] == side:
        w = 0.25 + 0.3 * px[1]
        upper = ramp(0.5 - v, 0.2)  # apical / lateral crescent, where free air collects when upright
        gap = ramp(ell - (1.0 - w), 0.03) * air * upper
        dens = dens - gap * (vessels * air + 0.25)
        line = ramp(0.025 - np.abs(ell - (1.0 - w)), 0.015) * air * upper
        dens = dens + 0.35 * line
    return dens, dia


def render(a: Anatomy, plants: Plants, size: int, rng: np.random.Generator) -> np.ndarray:
    """The (size, size) uint8 radiograph of anatomy ``a`` with the planted concepts ``plants``."""
    x, y = grid(size)
    half = size // 2
    noise = smooth_noise(rng, size, max(6, size // 12))  # lung markings / patchiness texture
    # Detector noise: centred uniform scaled to unit variance (sqrt(12)), cheaper to draw than a Gaussian
    # (docs/decisions.md#stages-phantom-detector-noise).
    sens = (rng.random((size, size), dtype=np.float32) - 0.5) * 3.464

    # Midline structures; scoliosis bends the spine and drags the mediastinum with it.
    sco = plants.get("scoliosis")
    bend = (0.05 + 0.07 * sco[1]) * (1 if sco[2][0] > 0.5 else -1) * np.sin(np.pi * (y + 0.6)) if sco else 0.0
    mx = a.mediastinum_x + (0.4 * bend if sco else 0.0)
    atel = plants.get("atelectasis")
    if atel and atel[0] in SIDE_SIGN:
        mx = mx + SIDE_SIGN[atel[0]] * (
            0.03 + 0.05 * atel[1]
        )  # volume loss shifts the mediastinum to its side

    body = ramp(a.body_half_width - np.abs(x), 0.04) * ramp(
        y + 0.98 + 0.6 * np.maximum(np.abs(x) - 0.35, 0), 0.05
    )
    dens = body.copy()
    dias = {}
    for side, sl in (("right", slice(0, half)), ("left", slice(half, size))):
        d, dias[side] = _lung_half(x[:, sl], y, a, side, plants, noise[:, sl])
        dens[:, sl] += d
    ribs_phase = (y + a.rib_curve * (np.abs(x) - 0.4) ** 2 * 2) * (1.0 / a.rib_spacing) + a.rib_phase
    ribs = np.clip(np.cos(ribs_phase * (2 * np.pi)) * 3 - 1.8, 0.0, 1.0) * (
        np.abs(x) < a.body_half_width - 0.08
    )
    dens += 0.22 * ribs * (y < 0.55)
    clav = (
        ramp(0.035 - np.abs(y - (a.clavicle_y - 0.18 * (np.abs(x) - 0.1))), 0.02)
        * (np.abs(x) > 0.06)
        * (np.abs(x) < 0.62)
    )
    dens += 0.35 * clav

    heart_rx = a.ctr * (a.lung_cx + a.lung_rx)  # CTR = heart width / internal thoracic width
    if (cm := plants.get("cardiomegaly")) is not None:
        heart_rx = (0.53 + 0.17 * cm[1]) * (a.lung_cx + a.lung_rx)
    if "hyperinflation" in plants:
        heart_rx *= 0.9
    hx = a.heart_x + (mx - a.mediastinum_x)
    heart = ramp(1.0 - ((x - hx) / heart_rx) ** 2 - ((y - a.heart_y) / a.heart_ry) ** 2, 0.15)
    dens += 0.5 * heart
    medi = ramp(a.mediastinum_w - np.abs(x - mx), 0.03) * (y < a.heart_y)
    dens += 0.45 * medi
    spine_x = mx + bend
    vert = 0.8 + 0.2 * np.cos(y * (2 * np.pi / 0.11))
    dens += 0.35 * ramp(a.spine_w - np.abs(x - spine_x), 0.02) * vert

    _devices(dens, x, y, a, plants, mx, hx, heart_rx, size)

    if (mb := plants.get("motion_blur")) is not None:
        k = 3 + int(round(6 * mb[1] * size / 224))
        axis = 0 if mb[2][0] < 0.5 else 1
        c = np.cumsum(dens, axis=axis, dtype=np.float32)
        c = np.concatenate([np.zeros_like(c.take([0], axis=axis)), c], axis=axis)
        n = dens.shape[axis]
        idx_hi = np.minimum(np.arange(n) + k // 2 + 1, n)
        idx_lo = np.maximum(np.arange(n) - k // 2, 0)
        dens = (c.take(idx_hi, axis=axis) - c.take(idx_lo, axis=axis)) / (idx_hi - idx_lo).reshape(
            (-1, 1) if axis == 0 else (1, -1)
        )

    lo, hi, gamma, sigma = a.lo, a.hi, a.gamma, a.noise
    if (ux := plants.get("underexposure")) is not None:
        # Too few photons: a pale, flat, mottled film.
        lo, hi, sigma = lo - 0.5 - 0.4 * ux[1], hi + 0.6, sigma * (1.8 + 1.2 * ux[1])
    pix = (dens - lo) * (1.0 / (hi - lo)) + sigma * sens
    if (gl := plants.get("grid_lines")) is not None:
        period = max(3, size // 40)
        stripes = (np.arange(size) % period < period // 2).astype(np.float32)[None, :]
        pix -= (0.05 + 0.06 * gl[1]) * stripes
    if (cl := plants.get("collimation")) is not None:
        m = (0.04 + 0.1 * cl[2][:4]) * size
        inside = np.zeros((size, size), dtype=bool)
        inside[int(m[0]) : size - int(m[1]), int(m[2]) : size - int(m[3])] = True
        pix = np.where(inside, pix, 0.9 + 0.05 * sigma * sens)
    img = (np.clip(pix, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    lut = (255.0 * (np.arange(256) / 255.0) ** gamma + 0.5).astype(np.uint8)
    img = np.take(lut, img)
    _overlays(img, plants, size)
    return img


def _devices(dens, x, y, a: Anatomy, plants: Plants, mx, hx, heart_rx, size: int) -> None:
    """Add radiopaque devices to ``dens`` in place (tubes ~0.6, metal ~1.2 density)."""
    if (ett := plants.get("endotracheal_tube")) is not None:
        tip = -0.55 + 0.15 * ett[2][0]
        above = y < tip
        dens += 0.25 * ramp(0.035 - np.abs(x - mx), 0.01) * above
        dens += 0.7 * line_x_of_y(x, mx + 0.028 + 0 * y, 0.012) * above
    if (ng := plants.get("nasogastric_tube")) is not None:
        yd = a.diaphragm_y - 0.05
        fx = mx - 0.02 + 0.02 * np.sin(3 * y) + 1.2 * np.clip(y - yd, 0.0, None) ** 2
        dens += 0.7 * line_x_of_y(x, fx, 0.014) * (y < yd + 0.25 + 0.1 * ng[2][0])
    svc_x = mx - 0.1
    if (cvc := plants.get("central_venous_catheter")) is not None:
        s = SIDE_SIGN.get(cvc[0], -1.0)
        x0, y0, y1 = s * (0.5 + 0.1 * cvc[2][0]), a.clavicle_y - 0.05, a.clavicle_y + 0.12
        gy = y0 + (x - x0) * ((y1 - y0) / (svc_x - x0))  # (1, S) straight course toward the SVC
        seg1 = ramp(0.014 - np.abs(y - gy), 0.008) * ((x - svc_x) * (x - x0) <= 0)
        tip = -0.15 + 0.2 * cvc[2][1]
        seg2 = line_x_of_y(x, svc_x + 0 * y, 0.014) * (y > y1 - 0.01) * (y < tip)
        dens += 0.7 * np.maximum(seg1, seg2)
    if (pm := plants.get("pacemaker")) is not None:
        s = SIDE_SIGN.get(pm[0], 1.0)
        gx, gy = s * (0.52 + 0.08 * pm[2][0]), -0.62 + 0.08 * pm[2][1]
        gen = ramp(1.0 - ((x - gx) / 0.12) ** 4 - ((y - gy) / 0.08) ** 4, 0.3)
        y1 = gy + 0.1
        lead1 = ramp(0.012 - np.abs(y - (gy + (x - gx) * ((y1 - gy) / (svc_x - gx)))), 0.008) * (
            (x - svc_x) * (x - gx) <= 0
        )
        tip_y = a.heart_y + 0.1
        fx = svc_x + (hx + 0.5 * heart_rx - svc_x) * np.clip((y - y1) / (tip_y - y1), 0, 1) ** 2
        lead2 = line_x_of_y(x, fx, 0.012) * (y > y1) * (y < tip_y)
        dens += 1.3 * gen + 0.8 * np.maximum(lead1, lead2)
    if (sw := plants.get("sternotomy_wires")) is not None:
        n = 5 + int(2 * sw[2][0])
        sp = 0.6 / n
        yy = np.mod(y + 0.45, sp) - sp / 2  # (S, 1): periodic rows of wire loops along the sternum
        ring = np.sqrt(((x - mx) / 0.05) ** 2 + (yy / (0.35 * sp)) ** 2)
        dens += 1.2 * ramp(0.3 - np.abs(ring - 1.0), 0.15) * ((y > -0.45) & (y < -0.45 + n * sp))
    if (ecg := plants.get("ecg_electrodes")) is not None:
        u = ecg[2]
        for k, (ex, ey) in enumerate(((-0.6, -0.75), (0.6, -0.75), (0.55, 0.5), (-0.55, 0.45))):
            if k >= 2 + int(3 * u[0]):
                break
            cx, cy = ex + 0.1 * (u[k + 1] - 0.5), ey + 0.1 * (u[(k + 2) % 6] - 0.5)
            r2 = (x - cx) ** 2 + (y - cy) ** 2
            dens += 0.9 * ramp(0.015 - np.abs(np.sqrt(r2) - 0.05), 0.01) + 1.0 * ramp(0.0004 - r2, 0.0002)


def _stamp(img: np.ndarray, mask: np.ndarray, top: int, left: int, value: int = 250) -> None:
    h, w = mask.shape
    top, left = max(0, min(top, img.shape[0] - h)), max(0, min(left, img.shape[1] - w))
    region = img[top : top + h, left : left + w]
    region[mask[: region.shape[0], : region.shape[1]]] = value


def _overlays(img: np.ndarray, plants: Plants, size: int) -> None:
    """Burn markers and text into the final image (they sit on the detector, not in the patient)."""
    sc = max(1, round(size / 112))
    if (pm := plants.get("portable_marker")) is not None:
        text = render_text("PORTABLE", sc)
        _stamp(img, text, int(size * (0.03 + 0.04 * pm[2][0])), int(size * (0.05 + 0.45 * pm[2][1])))
    if (lm := plants.get("laterality_marker")) is not None:
        letter = render_text("L" if lm[0] == "left" else "R", 2 * sc)
        col = int(size * 0.9) - letter.shape[1] if lm[0] == "left" else int(size * 0.06)
        _stamp(img, letter, int(size * (0.12 + 0.1 * lm[2][0])), col)
    if (bt := plants.get("burned_in_text")) is not None:
        digits = "".join(str(int(10 * v) % 10) for v in bt[2][:4])
        text = render_text(f"ID {digits}-{digits[::-1]}", sc)
        _stamp(img, text, size - text.shape[0] - int(size * 0.03), int(size * (0.03 + 0.2 * bt[2][4])), 235)
