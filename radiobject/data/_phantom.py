"""Seeded synthetic brain MR phantoms with a tumour, in pure numpy.

:func:`make_subject` draws one subject: an ellipsoidal head (scalp, skull, CSF, folded
grey-matter cortex, white matter, deep grey nuclei, two lateral ventricles), rendered in
any of :data:`MODALITIES` with modality-specific tissue contrast, a smooth bias field and
Rician noise, plus an optional tumour (necrotic core, enhancing rim, oedema) and its
BraTS-like label mask. Intensities are whole numbers stored as float32, as in volumes read
from scanner data. Everything is a function of the random generator only, and it is
fast: a 240 x 240 x 155 subject with two modalities takes under a second on one core.

>>> import numpy as np
>>> s = make_subject((32, 32, 24), np.random.default_rng(0))
>>> sorted(s.images), s.images["T1w"].dtype, s.mask.dtype, s.has_tumour
(['FLAIR', 'T1w'], dtype('float32'), dtype('uint8'), True)
>>> sorted(np.unique(s.mask).tolist())
[0, 1, 2, 3]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from radiobject._errors import ConfigurationError, ShapeError

__all__ = ["MODALITIES", "SubjectPhantom", "make_subject"]

MODALITIES: tuple[str, ...] = ("T1w", "T2w", "FLAIR", "T1gd", "CT")
"""Modality names :func:`make_subject` can render."""

_Box = tuple[slice, slice, slice]

# Tissue intensities per modality, roughly in [0, 1000] before bias field and noise.
_TISSUES = ("scalp", "skull", "csf", "gm", "wm", "deep_gm", "oedema", "enhancing", "necrosis")
_CONTRAST: dict[str, tuple[float, ...]] = {
    #        scalp  skull  csf   gm    wm    dgm   oed   enh   nec
    "T1w": (560.0, 70.0, 110.0, 430.0, 640.0, 520.0, 330.0, 400.0, 160.0),
    "T2w": (420.0, 50.0, 850.0, 560.0, 360.0, 470.0, 760.0, 600.0, 800.0),
    "FLAIR": (380.0, 40.0, 70.0, 560.0, 410.0, 500.0, 820.0, 640.0, 300.0),
    "T1gd": (580.0, 70.0, 120.0, 430.0, 640.0, 520.0, 330.0, 850.0, 150.0),
    # CT-like densities on the same scale (HU + 1000, scaled): bone brightest, oedema dark
    "CT": (420.0, 980.0, 300.0, 440.0, 400.0, 450.0, 350.0, 470.0, 320.0),
}
_MAX_INTENSITY = 1000.0
_NOISE_REF = 600.0  # noise sigma is a fraction of this intensity
_SLAB_VOXELS = 1 << 17  # voxels per slab of the rendering loop (fits in cache)
_N_WAVES = 8  # random waves on the sphere that shape the cortical folding


@dataclass(frozen=True)
class SubjectPhantom:
    """One synthetic subject: co-registered images and a tumour label mask.

    Attributes:
        images: modality name -> float32 volume of shape ``(X, Y, Z)``; all modalities
            share one anatomy and grid. Intensities are roughly in ``[0, 1000]``; voxels
            outside the head are exactly 0.
        mask: uint8 volume of the same shape: 0 background, 1 necrotic core, 2 oedema,
            3 enhancing tumour (BraTS-like labels). All zeros for a healthy subject.
        has_tumour: whether the subject was drawn with a tumour.
    """

    images: dict[str, np.ndarray]
    mask: np.ndarray
    has_tumour: bool


def _ramp(src: np.ndarray, edge: float, iw: float, out: np.ndarray | None = None) -> np.ndarray:
    """Partial-volume fraction of being inside ``src < edge``: ``clip((edge - src) * iw + .5)``."""
    out = np.multiply(src, -iw, out=out)
    out += edge * iw + 0.5
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _unit(rng: np.random.Generator) -> np.ndarray:
    """A random unit 3-vector."""
    v = rng.standard_normal(3)
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _f(x: float | np.floating) -> float:
    return float(x)


class _Head:
    """Head geometry of one subject: its parameters and the small 1D/2D tables it needs.

    Coordinates: ``xr``, ``yr`` are voxel offsets from the head centre in the head frame
    (rotated by the yaw), ``zr`` along the last axis; normalised coordinates divide by the
    head semi-axes so the head surface is at radius 1.
    """

    def __init__(self, shape: tuple[int, int, int], rng: np.random.Generator) -> None:
        nx, ny, nz = shape
        self.shape = shape
        frac = (rng.uniform(0.30, 0.36), rng.uniform(0.38, 0.44), rng.uniform(0.39, 0.45))
        self.ax, self.ay, self.az = (_f(f * n) for f, n in zip(frac, shape, strict=True))
        self.cx, self.cy, self.cz = (_f((n - 1) / 2 + rng.uniform(-0.03, 0.03) * n) for n in shape)
        yaw = _f(rng.uniform(-0.12, 0.12))
        taper = _f(rng.uniform(0.0, 0.1))  # egg shape: wider at the back
        self.yaw = yaw
        r_mean = (self.ax + self.ay + self.az) / 3
        self.iw = r_mean  # ramp steepness: about one voxel of partial volume

        # layers, in normalised radius
        atrophy = _f(rng.uniform(0.0, 1.0))
        self.e_skull_out = 1.0 - _f(rng.uniform(0.05, 0.07))
        self.e_skull_in = self.e_skull_out - _f(rng.uniform(0.06, 0.08))
        self.e_brain = self.e_skull_in - _f(rng.uniform(0.015, 0.03)) - 0.02 * atrophy
        ctx = min(max(1.5 / r_mean, 0.045), 0.12) * _f(rng.uniform(0.9, 1.1))
        self.e_wm = self.e_brain - ctx
        self.atrophy = atrophy

        # cortical folding: random waves on the sphere of directions; sulci along |g| ~ 0
        r_brain = self.e_brain * r_mean
        period = min(max(0.22 * r_brain, 5.0), 16.0)  # voxels between gyri
        k = 2 * math.pi * r_brain / period
        self.sulcus_depth = _f(rng.uniform(0.10, 0.15)) + 0.03 * atrophy
        scale = math.sqrt(_N_WAVES / 2)
        self.t_b = 0.35 * scale  # half-width of a sulcus (CSF), in units of g
        self.t_w = 1.0 * scale  # half-width of the white-matter retreat around it
        fissure = _f(rng.uniform(0.35, 0.45))  # interhemispheric fissure depth
        wf = 1.3  # its half-width, voxels

        # 2D tables over (X, Y) and 1D over Z
        i = np.arange(nx, dtype=np.float32)[:, None] - np.float32(self.cx)
        j = np.arange(ny, dtype=np.float32)[None, :] - np.float32(self.cy)
        c, s = math.cos(yaw), math.sin(yaw)
        self.xr = (i * c + j * s).astype(np.float32)
        self.yr = (j * c - i * s).astype(np.float32)
        self.zr = np.arange(nz, dtype=np.float32) - np.float32(self.cz)
        yn = self.yr / self.ay
        xn = self.xr / (self.ax * (1.0 + taper * (-yn)))
        zn = self.zr / self.az
        self.xy2 = (xn * xn + yn * yn).astype(np.float32)
        self.zz = (zn * zn).astype(np.float32)
        # each wave's phase also drifts with depth, so sulci curve instead of being radial
        self.waves: list[tuple[np.ndarray, np.ndarray, float]] = []
        for _ in range(_N_WAVES):
            n = _unit(rng) * k
            phase = _f(rng.uniform(0, 2 * math.pi))
            a2 = (n[0] * xn + n[1] * yn + phase).astype(np.float32)
            c1 = (n[2] * zn).astype(np.float32)
            self.waves.append((a2, c1, _f(rng.uniform(-0.4, 0.4)) * k))
        ax_abs = np.abs(self.xr)
        self.fiss_b = (fissure * np.clip(1.0 - ax_abs / wf, 0.0, 1.0)).astype(np.float32)
        wf_w = wf + ctx * self.ax
        self.fiss_w = ((fissure + ctx) * np.clip(1.0 - ax_abs / wf_w, 0.0, 1.0)).astype(np.float32)
        self.fissure_halfwidth = wf_w

    def radii(self, box: _Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised radius ``d`` and the brain / white-matter level fields on ``box``.

        A voxel is inside the head where ``d < 1``, inside the brain where
        ``rb < e_brain`` and in white matter where ``rw < e_wm``.
        """
        xs, ys, zs = box
        d = np.add(self.xy2[xs, ys][:, :, None], self.zz[zs])
        np.sqrt(d, out=d)
        inv = np.maximum(d, 1e-3)
        np.reciprocal(inv, out=inv)
        g = np.zeros_like(d)
        t = np.empty_like(d)
        curl = np.empty_like(d)
        for a2, c1, kappa in self.waves:
            np.add(a2[xs, ys][:, :, None], c1[zs], out=t)
            t *= inv
            np.multiply(d, kappa, out=curl)
            t += curl
            np.cos(t, out=t)
            g += t
        np.abs(g, out=g)
        # sulci where |g| is small: the brain surface and the white matter both retreat
        rb = np.multiply(g, -1.0 / self.t_b, out=t)
        rb += 1.0
        np.clip(rb, 0.0, 1.0, out=rb)
        rb *= self.sulcus_depth
        rb += d
        rb += self.fiss_b[xs, ys][:, :, None]
        rw = np.multiply(g, -2.0 / self.t_w, out=g)  # flat-bottomed: gyri keep a ribbon
        rw += 2.0
        np.clip(rw, 0.0, 1.0, out=rw)
        rw *= self.sulcus_depth
        rw += d
        rw += self.fiss_w[xs, ys][:, :, None]
        return d, rb, rw

    def frame(self, box: _Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Head-frame voxel offsets ``(xr, yr, zr)`` on ``box``, broadcastable to it."""
        xs, ys, zs = box
        return self.xr[xs, ys][:, :, None], self.yr[xs, ys][:, :, None], self.zr[zs]

    def box_around(self, hx: float, hy: float, hz: float) -> _Box:
        """Voxel box holding the head-frame box ``|xr| <= hx, |yr| <= hy, |zr| <= hz``."""
        c, s = abs(math.cos(self.yaw)), abs(math.sin(self.yaw))
        half = (c * hx + s * hy, s * hx + c * hy, hz)
        return _box((self.cx, self.cy, self.cz), half, self.shape)


def _box(center: Sequence[float], half: Sequence[float], shape: Sequence[int]) -> _Box:
    """Voxel slices of ``center +- half`` (plus a margin), clipped to the grid, never empty."""
    out = []
    for c, h, n in zip(center, half, shape, strict=True):
        lo = min(max(math.floor(c - h) - 1, 0), n - 1)
        hi = max(min(math.ceil(c + h) + 2, n), lo + 1)
        out.append(slice(lo, hi))
    return out[0], out[1], out[2]


@dataclass
class _Patch:
    """Blend ``img += frac * (value * gain - img)`` on ``box`` (a structure drawn over)."""

    box: _Box
    frac: np.ndarray
    tissue: int
    gain: np.ndarray | None = None

    def apply(self, img: np.ndarray, x0: int, x1: int, value: float) -> None:
        bx = self.box[0]
        lo, hi = max(x0, bx.start), min(x1, bx.stop)
        if lo >= hi:
            return
        dst = img[lo - x0 : hi - x0, self.box[1], self.box[2]]
        f = self.frac[lo - bx.start : hi - bx.start]
        target = value if self.gain is None else value * self.gain[lo - bx.start : hi - bx.start]
        dst += f * (target - dst)


def _ellipsoid_q(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    center: Sequence[float] | np.ndarray,
    semi: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Squared normalised distance to an axis-aligned ellipsoid centre."""
    q: np.ndarray = (((x - center[0]) / semi[0]) ** 2 + ((y - center[1]) / semi[1]) ** 2) + (
        (z - center[2]) / semi[2]
    ) ** 2
    return q


def _central_structures(
    head: _Head, rng: np.random.Generator
) -> tuple[_Box, np.ndarray, np.ndarray, Callable[[_Box], np.ndarray]]:
    """Deep grey nuclei and lateral ventricles: their box, fractions and a fraction function."""
    ax, ay, az = head.ax, head.ay, head.az
    enlarge = 1.0 + 0.4 * head.atrophy
    v_sx = max(_f(rng.uniform(0.06, 0.09)) * ax * enlarge, 0.7)
    v_off = v_sx + max(_f(rng.uniform(0.015, 0.03)) * ax, 0.6)  # septum between the two
    v_sy = _f(rng.uniform(0.24, 0.3)) * ay
    v_sz = max(_f(rng.uniform(0.10, 0.14)) * az * enlarge, 0.7)
    v_cy = _f(rng.uniform(-0.06, 0.04)) * ay
    v_cz = _f(rng.uniform(0.02, 0.10)) * az
    v_tan = math.tan(_f(rng.uniform(0.0, 0.2)))  # posterior horns diverge more
    v_bend = _f(rng.uniform(0.6, 1.2)) * v_sx  # ")(": both horns bend outwards
    # thalamus and putamen, mirrored (lateral offset, y, z, semi-axes) in head voxels
    nuclei = [
        (
            v_off + v_sx + 0.09 * ax,
            v_cy - 0.18 * ay,
            v_cz - 0.24 * az,
            0.10 * ax,
            0.14 * ay,
            0.12 * az,
        ),
        (
            v_off + v_sx + 0.22 * ax,
            v_cy + 0.08 * ay,
            v_cz - 0.2 * az,
            0.055 * ax,
            0.15 * ay,
            0.11 * az,
        ),
    ]
    jitter = rng.uniform(0.9, 1.1, size=(len(nuclei), 6))
    nuclei = [
        (n[0] * j[0], n[1] * j[1], n[2] * j[2], n[3] * j[3], n[4] * j[4], n[5] * j[5])
        for n, j in zip(nuclei, jitter.tolist(), strict=True)
    ]
    v_smin = min(v_sx, v_sy, v_sz)

    def vent_frac(box: _Box) -> np.ndarray:
        xr, yr, zr = head.frame(box)
        yv = (yr - v_cy) / v_sy
        sides = []
        for side in (-1.0, 1.0):
            lx = side * xr - v_off - v_tan * (v_cy - yr) - v_bend * yv * yv
            sides.append(((lx / v_sx) ** 2 + yv * yv) + ((zr - v_cz) / v_sz) ** 2)
        q = np.minimum(sides[0], sides[1])
        np.sqrt(q, out=q)
        return _ramp(q, 1.0, v_smin, out=q)

    box = head.box_around(0.5 * ax, 0.55 * ay, 0.5 * az)
    xr, yr, zr = head.frame(box)
    f_dgm = functools.reduce(
        np.minimum,
        [
            _ellipsoid_q(side * xr, yr, zr, (lat, cy, cz), (sx, sy, sz))
            for lat, cy, cz, sx, sy, sz in nuclei
            for side in (-1.0, 1.0)
        ],
    )
    np.sqrt(f_dgm, out=f_dgm)
    f_dgm = _ramp(f_dgm, 1.0, max(min(n[3] for n in nuclei), 1.0), out=f_dgm)
    f_dgm *= 0.85
    return box, f_dgm, vent_frac(box), vent_frac


def _angular(
    dx: np.ndarray,
    dy: np.ndarray,
    dz: np.ndarray,
    inv_r: np.ndarray,
    rng: np.random.Generator,
    n_terms: int,
    amp: float,
    freq: tuple[float, float],
) -> np.ndarray:
    """A smooth random function of direction only, with values in ``[-amp, amp]``."""
    out = np.zeros(np.broadcast_shapes(dx.shape, dy.shape, dz.shape), dtype=np.float32)
    weights = rng.uniform(0.5, 1.0, n_terms)
    weights *= amp / weights.sum()
    t = np.empty_like(out)
    for w in weights:
        n = _unit(rng) * _f(rng.uniform(*freq))
        phase = _f(rng.uniform(0, 2 * math.pi))
        np.add(n[0] * dx + n[1] * dy, n[2] * dz, out=t)
        t *= inv_r
        t += phase
        np.cos(t, out=t)
        t *= _f(w)
        out += t
    return out


def _tumour(
    head: _Head, vent_frac: Callable[[_Box], np.ndarray], rng: np.random.Generator
) -> tuple[_Box, np.ndarray, list[_Patch]]:
    """Draw a tumour: its box, its label mask on the box and its image patches."""
    ax, ay, az = head.ax, head.ay, head.az
    # centre, in normalised head coordinates: off the midline, well inside the brain
    side = 1.0 if rng.random() < 0.5 else -1.0
    ux_min = min(max(0.12, (head.fissure_halfwidth + 1.5) / ax), 0.35)
    u = np.array(
        [side * rng.uniform(ux_min, 0.42), rng.uniform(-0.45, 0.45), rng.uniform(-0.3, 0.4)]
    )
    norm = float(np.linalg.norm(u))
    if norm > 0.5:
        u *= 0.5 / norm
        u[0] = side * max(abs(u[0]), ux_min)
    r_brain = head.e_brain * min(ax, ay, az)
    r0 = 2.0 + _f(rng.uniform(0.10, 0.22)) * r_brain  # core radius, voxels
    lobes = [(np.zeros(3), r0 * rng.uniform(0.8, 1.2, 3))]
    for _ in range(int(rng.integers(1, 3))):
        off = _unit(rng) * r0 * _f(rng.uniform(0.4, 0.8))
        lobes.append((off, r0 * rng.uniform(0.45, 0.8, 3)))
    beta = 8.0
    amp_c, amp_n, amp_o = 0.18, 0.2, 0.3
    rho_n = 0.0 if rng.random() < 0.15 else _f(rng.uniform(0.4, 0.7))  # necrotic core size
    s_o = _f(rng.uniform(1.4, 2.4))  # oedema extent relative to the core
    k_o = _f(rng.uniform(0.65, 0.85))  # oedema strength

    # tumour centre in voxels: undo the yaw (the egg taper moves it by < 5 %: ignored)
    xr, yr, zr = u[0] * ax, u[1] * ay, u[2] * az
    c, s = math.cos(head.yaw), math.sin(head.yaw)
    centre = (head.cx + xr * c - yr * s, head.cy + xr * s + yr * c, head.cz + zr)
    centre = tuple(min(max(p, 0.0), n - 1.0) for p, n in zip(centre, head.shape, strict=True))
    thr_max = s_o * 1.1 / (1.0 - amp_o) + math.log(len(lobes)) / beta
    ext = max(float(np.linalg.norm(o)) + thr_max * float(semi.max()) for o, semi in lobes)
    box = _box(centre, (ext, ext, ext), head.shape)

    dx = (np.arange(box[0].start, box[0].stop, dtype=np.float32) - centre[0])[:, None, None]
    dy = (np.arange(box[1].start, box[1].stop, dtype=np.float32) - centre[1])[None, :, None]
    dz = (np.arange(box[2].start, box[2].stop, dtype=np.float32) - centre[2])[None, None, :]
    acc = np.zeros((len(dx), dy.shape[1], dz.shape[2]), dtype=np.float32)
    for off, semi in lobes:
        q = _ellipsoid_q(dx, dy, dz, off, semi)
        np.sqrt(q, out=q)
        q *= -beta
        np.exp(q, out=q)
        acc += q
    np.maximum(acc, 1e-30, out=acc)
    cfield = np.log(acc, out=acc)
    cfield *= -1.0 / beta  # smooth union of the lobes: < 1 inside

    inv_r = np.sqrt(dx * dx + dy * dy + dz * dz)
    np.maximum(inv_r, 0.5, out=inv_r)
    np.reciprocal(inv_r, out=inv_r)
    p_c = _angular(dx, dy, dz, inv_r, rng, 3, amp_c, (1.5, 3.0))
    p_n = _angular(dx, dy, dz, inv_r, rng, 3, amp_n, (1.5, 3.5))
    p_o = _angular(dx, dy, dz, inv_r, rng, 4, amp_o, (2.0, 5.0))
    c_core = cfield * (1.0 + p_c)
    c_nec = cfield * (1.0 + p_n)
    c_oed = cfield * (1.0 + p_o)
    c_oed *= 1.0 / s_o

    _, rb, rw = head.radii(box)
    f_brain = _ramp(rb, head.e_brain, head.iw, out=rb)
    f_wm = _ramp(rw, head.e_wm, head.iw, out=rw)
    f_vent = vent_frac(box)
    thr_o = 0.75 + 0.35 * f_wm  # oedema spreads further in white matter

    brain = f_brain >= 0.5
    core = (c_core < 1.0) & brain
    ci = tuple(round(p) - b.start for p, b in zip(centre, box, strict=True))
    core[ci] = True  # the seed voxel: the mask is never empty
    nec = core & (c_nec < rho_n)
    oed = (c_oed < thr_o) & brain & (f_vent < 0.5)
    label = np.zeros(core.shape, dtype=np.uint8)
    label[oed] = 2
    label[core] = 3
    label[nec] = 1

    iw = r0
    e_c = _ramp(c_core, 1.0, iw)
    e_c *= f_brain
    e_c[ci] = max(float(e_c[ci]), 0.75)
    e_n = _ramp(c_nec, rho_n, iw)
    e_n *= e_c
    e_o = np.subtract(thr_o, c_oed)  # the oedema threshold varies: a ramp by hand
    e_o *= iw * s_o
    e_o += 0.5
    np.clip(e_o, 0.0, 1.0, out=e_o)
    e_o *= f_brain
    e_o *= 1.0 - f_vent
    e_o *= k_o
    gain = 1.0 + 0.6 * p_n  # heterogeneous enhancement
    tissue = _TISSUES.index
    patches = [
        _Patch(box, e_o, tissue("oedema")),
        _Patch(box, e_c, tissue("enhancing"), gain),
        _Patch(box, e_n, tissue("necrosis")),
    ]
    return box, label, patches


def _check_args(shape: Sequence[int], rng: object, modalities: Sequence[str]) -> tuple[int, ...]:
    if isinstance(modalities, str):
        raise ConfigurationError(f"modalities must be a sequence of names, got {modalities!r}")
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ConfigurationError(f"unknown modalities {unknown}; choose from {list(MODALITIES)}")
    if len(set(modalities)) != len(modalities):
        raise ConfigurationError(f"modalities repeat a name: {list(modalities)}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    dims = tuple(int(n) for n in shape)
    if len(dims) != 3 or min(dims) < 8:
        raise ShapeError(f"shape must be 3 sizes >= 8, got {tuple(shape)}")
    return dims


def make_subject(
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    modalities: Sequence[str] = ("T1w", "FLAIR"),
    tumour: bool = True,
) -> SubjectPhantom:
    """Draw one synthetic brain MR subject on a ``shape`` grid.

    The head (size, position, yaw, cortical folding, ventricles), the tumour and each
    modality's contrast, bias field and noise are drawn from ``rng`` only, so a seed gives
    the same subject every time. A modality looks the same whichever other modalities are
    asked for, and ``tumour=False`` gives the healthy twin of the same anatomy.

    Axes are (left-right, posterior-anterior, inferior-superior), voxels about isotropic.
    The tumour mask is never empty for ``tumour=True`` (its seed voxel is always labelled).

    Args:
        shape: grid size ``(X, Y, Z)``, each >= 8; e.g. ``(240, 240, 155)`` for BraTS.
        rng: the random generator, e.g. ``np.random.default_rng(seed)``.
        modalities: names from :data:`MODALITIES`.
        tumour: draw a tumour (else the mask is all zeros).

    Returns:
        The images, label mask and tumour flag.

    Raises:
        ConfigurationError: an unknown or repeated modality name.
        ShapeError: ``shape`` is not 3 sizes >= 8.
        TypeError: ``rng`` is not a ``numpy.random.Generator``.

    >>> import numpy as np
    >>> a = make_subject((24, 24, 24), np.random.default_rng(1), modalities=["T2w"])
    >>> b = make_subject((24, 24, 24), np.random.default_rng(1), modalities=["T2w"])
    >>> bool((a.images["T2w"] == b.images["T2w"]).all()), bool(a.mask.any())
    (True, True)
    """
    dims = _check_args(shape, rng, modalities)
    nx, ny, nz = dims

    # all random draws happen here, in a fixed order, whatever is asked for
    head = _Head((nx, ny, nz), rng)
    box_c, f_dgm, f_vent, vent_frac = _central_structures(head, rng)
    noise_rel = _f(rng.uniform(0.015, 0.03))
    seeds = rng.integers(0, 2**63, size=len(MODALITIES))
    tumour_rng = np.random.default_rng(rng.integers(0, 2**63))  # healthy twin: same anatomy

    tissue = _TISSUES.index
    patches = [_Patch(box_c, f_dgm, tissue("deep_gm")), _Patch(box_c, f_vent, tissue("csf"))]
    mask = np.zeros(dims, dtype=np.uint8)
    if tumour:
        box_t, label, t_patches = _tumour(head, vent_frac, tumour_rng)
        mask[box_t] = label
        patches += t_patches

    # per modality: contrast jitter, bias field, noise level and noise stream
    grids = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in dims]
    setup = {}
    for name in modalities:
        mrng = np.random.default_rng(seeds[MODALITIES.index(name)])
        gain = _f(mrng.uniform(0.92, 1.04))
        values = [_f(v * gain * mrng.uniform(0.95, 1.05)) for v in _CONTRAST[name]]
        bias = []
        for g in grids:
            a1, a2 = mrng.uniform(-0.04, 0.04, 2)
            w, ph = mrng.uniform(0.5, 1.5), mrng.uniform(0, 2 * math.pi)
            bias.append((1.0 + a1 * g + a2 * np.cos(w * math.pi * g + ph)).astype(np.float32))
        byz = (bias[1][:, None] * bias[2][None, :]).astype(np.float32)
        sigma = noise_rel * _NOISE_REF * _f(mrng.uniform(0.85, 1.15))
        setup[name] = (values, bias[0], byz, sigma, mrng)

    images = {name: np.empty(dims, dtype=np.float32) for name in modalities}
    slab = max(1, min(nx, _SLAB_VOXELS // (ny * nz)))
    ramps = np.empty((5, slab, ny, nz), dtype=np.float32)
    tmp = np.empty((slab, ny, nz), dtype=np.float32)
    tmp2 = np.empty_like(tmp)
    noise = np.empty_like(tmp)
    edges = (1.0, head.e_skull_out, head.e_skull_in, head.e_brain, head.e_wm)
    for x0 in range(0, nx, slab):
        x1 = min(nx, x0 + slab)
        n = x1 - x0
        d, rb, rw = head.radii((slice(x0, x1), slice(None), slice(None)))
        r = ramps[:, :n]
        for k, (src, edge) in enumerate(zip((d, d, d, rb, rw), edges, strict=True)):
            _ramp(src, edge, head.iw, out=r[k])
        t, t2, nb = tmp[:n], tmp2[:n], noise[:n]
        for name in modalities:
            values, bx, byz, sigma, mrng = setup[name]
            img = images[name][x0:x1]
            # scalp, skull, CSF, grey and white matter: nested layers
            levels = values[:5]
            np.multiply(r[0], levels[0], out=img)
            for k in range(1, 5):
                np.multiply(r[k], levels[k] - levels[k - 1], out=t)
                img += t
            for p in patches:
                p.apply(img, x0, x1, values[p.tissue])
            img *= bx[x0:x1, None, None]
            img *= byz
            # Rician noise, only inside the head: |signal + sigma * (n1 + i n2)|, where the
            # imaginary part n2 is the slab's draw read backwards (independent per voxel)
            mrng.standard_normal(dtype=np.float32, out=nb)
            np.multiply(r[0], sigma, out=t)
            np.multiply(nb[::-1, ::-1, ::-1], t, out=t2)
            nb *= t
            img += nb
            np.square(img, out=img)
            np.square(t2, out=t2)
            img += t2
            np.sqrt(img, out=img)
            np.minimum(img, _MAX_INTENSITY, out=img)
            # scanners store whole numbers (DICOM pixel data, BraTS's int16 NIfTIs); float32
            # volumes read from them hold integers, and that is what compression sees
            np.rint(img, out=img)
    return SubjectPhantom(images=images, mask=mask, has_tumour=bool(tumour))
