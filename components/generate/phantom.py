"""Abdominal CT phantoms in Hounsfield units: body, spine, two kidneys and one kidney lesion.

Geometry is in millimetres on the axial plane: x runs to the patient's left (image columns), y runs
posterior (image rows), so the spine sits low in the image. Every structure varies smoothly with the
slice position z, so neighbouring slices of one patient are near-identical, as in a real series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
BONE_HU = 700.0
KIDNEY_HU = 150.0  # enhanced parenchyma (nephrographic phase), as in contrast-enhanced abdominal CT
PERIRENAL_FAT_HU = -90.0
FIELD_OF_VIEW_MM = 380.0
LESION_KINDS = ("normal", "cyst", "tumor", "stone")


@dataclass(frozen=True)
class Ellipse:
    """An ellipse centred at (cx, cy) mm with semi-axes (ax, ay) mm, rotated by `angle` radians."""

    cx: float
    cy: float
    ax: float
    ay: float
    angle: float = 0.0

    def mask(self, grid: "Grid", scale: float = 1.0) -> np.ndarray:
        """Boolean mask of the pixels inside the ellipse, its axes multiplied by `scale`."""
        reach = max(self.ax, self.ay) * scale
        rows, cols = grid.window(self.cy, reach), grid.window(self.cx, reach)
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        dx, dy = grid.x[:, cols] - float(self.cx), grid.y[rows, :] - float(self.cy)
        u = (dx * cos + dy * sin) / float(self.ax * scale)
        v = (-dx * sin + dy * cos) / float(self.ay * scale)
        mask = np.zeros(grid.shape, dtype=bool)
        mask[rows, cols] = u * u + v * v <= 1.0
        return mask


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates in mm of a square matrix covering FIELD_OF_VIEW_MM."""

    x: np.ndarray
    y: np.ndarray
    spacing: float

    @classmethod
    def square(cls, matrix: int, fov_mm: float = FIELD_OF_VIEW_MM) -> "Grid":
        spacing = fov_mm / matrix
        axis = ((np.arange(matrix, dtype=np.float32) + 0.5) * spacing - fov_mm / 2).astype(np.float32)
        return cls(x=axis[np.newaxis, :], y=axis[:, np.newaxis], spacing=spacing)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y.shape[0], self.x.shape[1])

    def window(self, center: float, reach: float) -> slice:
        """Index range of the pixels within `reach` mm of `center` along either axis."""
        first = math.floor((center - reach - float(self.x[0, 0])) / self.spacing)
        last = math.ceil((center + reach - float(self.x[0, 0])) / self.spacing) + 1
        return slice(max(first, 0), min(max(last, 0), self.shape[1]))


@dataclass(frozen=True)
class Lesion:
    """One kidney lesion; its in-plane radius follows a sphere-like profile along z."""

    kind: str  # one of LESION_KINDS except "normal"
    kidney: int  # 0: image-left kidney, 1: image-right kidney
    theta: float  # polar angle of the lesion centre in the kidney's frame
    reach: float  # centre's distance from the kidney centre, as a fraction of the way to its outline
    radius: float  # mm, at the lesion's widest slice
    z_center: float  # slices
    z_half_extent: float  # slices; > distance to any slice, so every slice shows the lesion
    hu: float  # fluid value (cyst), peak density (stone), mean density (tumor)
    phases: tuple[float, ...]  # texture / lobulation phases (tumor)


@dataclass(frozen=True)
class Anatomy:
    """Everything that makes one fake patient: drawn once, then sliced."""

    body: Ellipse
    fat_thickness: float
    vertebra: Ellipse
    spinous_process: Ellipse
    kidneys: tuple[Ellipse, Ellipse]
    kidney_z_half_extent: float  # slices
    drift_mm_per_slice: float
    noise_sigma: float
    lesion: Lesion | None


def sphere_profile(z: float, center: float, half_extent: float) -> float:
    """Relative radius of a sphere's cross-section at distance |z - center| (1 at the centre)."""
    t = min(abs(z - center) / half_extent, 1.0)
    return math.sqrt(1.0 - t * t)


def random_anatomy(rng: np.random.Generator, kind: str, n_slices: int) -> Anatomy:
    """Draw one patient's anatomy and (for a lesion class) one lesion in one kidney."""
    if kind not in LESION_KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}; expected one of {', '.join(LESION_KINDS)}")
    body = Ellipse(rng.uniform(-8, 8), rng.uniform(-10, 5), rng.uniform(135, 170), rng.uniform(100, 125))
    spine_x, spine_y = body.cx + rng.uniform(-3, 3), body.cy + body.ay * rng.uniform(0.45, 0.55)
    vertebra_r = rng.uniform(15, 20)
    kidneys = (_kidney(rng, spine_x, spine_y, -1.0), _kidney(rng, spine_x, spine_y, 1.0))
    lesion = None if kind == "normal" else _lesion(rng, kind, kidneys, n_slices)
    return Anatomy(
        body=body,
        fat_thickness=rng.uniform(12, 28),
        vertebra=Ellipse(spine_x, spine_y, vertebra_r, vertebra_r * rng.uniform(0.85, 1.0)),
        spinous_process=Ellipse(spine_x, spine_y + vertebra_r + 14, 5, 14),
        kidneys=kidneys,
        kidney_z_half_extent=n_slices * rng.uniform(1.2, 2.0) + 2,
        drift_mm_per_slice=rng.uniform(-0.6, 0.6),
        noise_sigma=rng.uniform(10, 20),
        lesion=lesion,
    )


def _kidney(rng: np.random.Generator, spine_x: float, spine_y: float, side: float) -> Ellipse:
    """A kidney beside the spine (side -1: image left, +1: image right), tilted anteromedially."""
    return Ellipse(
        cx=spine_x + side * rng.uniform(58, 75),
        cy=spine_y - rng.uniform(0, 12),
        ax=rng.uniform(30, 38),
        ay=rng.uniform(22, 27),
        angle=side * rng.uniform(0.3, 0.7),
    )


def _lesion(rng: np.random.Generator, kind: str, kidneys: tuple[Ellipse, Ellipse], n_slices: int) -> Lesion:
    """Place a lesion of `kind` in a random kidney, sized and positioned for that kind."""
    side = int(rng.integers(0, 2))
    kidney = kidneys[side]
    theta = rng.uniform(0, 2 * np.pi)
    z_center = (n_slices - 1) / 2 + rng.uniform(-1.0, 1.0)
    farthest = max(z_center, n_slices - 1 - z_center) + 0.5
    half = farthest * rng.uniform(1.3, 1.8) + 0.5  # the lesion is visible on every slice
    if kind == "cyst":
        reach, radius, hu = rng.uniform(0.15, 0.4), kidney.ay * rng.uniform(0.6, 0.85), rng.uniform(3, 15)
    elif kind == "stone":
        reach, radius, hu = rng.uniform(0.0, 0.35), rng.uniform(5.0, 8.0), rng.uniform(900, 1500)
    else:  # tumor: centred near the outline so it bulges out of the kidney
        reach, radius, hu = rng.uniform(0.75, 0.95), kidney.ay * rng.uniform(0.7, 1.0), rng.uniform(35, 45)
    return Lesion(kind, side, theta, reach, radius, z_center, half, hu, tuple(rng.uniform(0, 2 * np.pi, size=8)))


def _point_in(ellipse: Ellipse, theta: float, reach: float) -> tuple[float, float]:
    """The point at polar angle theta, `reach` of the way from the centre to the outline."""
    u, v = ellipse.ax * reach * math.cos(theta), ellipse.ay * reach * math.sin(theta)
    cos, sin = math.cos(ellipse.angle), math.sin(ellipse.angle)
    return ellipse.cx + u * cos - v * sin, ellipse.cy + u * sin + v * cos


@dataclass(frozen=True)
class SliceLayers:
    """A noise-free slice in HU with the masks tests and figures need."""

    hu: np.ndarray  # float32
    kidneys: np.ndarray  # bool, both kidneys as drawn before the lesion
    lesion: np.ndarray  # bool, empty for normal


def draw_slice(anatomy: Anatomy, z: int, grid: Grid) -> SliceLayers:
    """Paint slice `z` (0-based index in the series) of a patient, without noise."""
    shift = anatomy.drift_mm_per_slice * z
    hu = np.full(grid.shape, AIR_HU, np.float32)
    body = _shifted(anatomy.body, shift, scale=1.0 + 0.004 * z)
    hu[body.mask(grid)] = FAT_HU
    inner = Ellipse(body.cx, body.cy, body.ax - anatomy.fat_thickness, body.ay - anatomy.fat_thickness * 0.8)
    hu[inner.mask(grid)] = SOFT_TISSUE_HU
    kidney_scale = max(sphere_profile(z, -2.0, anatomy.kidney_z_half_extent), 0.6)
    placed = [_shifted(kidney, shift, kidney_scale) for kidney in anatomy.kidneys]
    kidneys = np.zeros_like(hu, dtype=bool)
    for kidney in placed:
        hu[kidney.mask(grid, 1.3)] = PERIRENAL_FAT_HU
        kidneys |= kidney.mask(grid)
    hu[kidneys] = KIDNEY_HU
    hu[_shifted(anatomy.vertebra, shift).mask(grid)] = BONE_HU
    hu[_shifted(anatomy.spinous_process, shift).mask(grid)] = BONE_HU
    lesion = np.zeros_like(kidneys)
    if anatomy.lesion is not None:
        lesion = _draw_lesion(hu, anatomy.lesion, z, placed[anatomy.lesion.kidney], grid)
    return SliceLayers(hu=hu, kidneys=kidneys, lesion=lesion)


def _shifted(ellipse: Ellipse, dx: float, scale: float = 1.0) -> Ellipse:
    """The ellipse moved dx mm along x (slow patient drift along z), axes scaled."""
    return Ellipse(ellipse.cx + dx, ellipse.cy, ellipse.ax * scale, ellipse.ay * scale, ellipse.angle)


def _draw_lesion(hu: np.ndarray, lesion: Lesion, z: int, kidney: Ellipse, grid: Grid) -> np.ndarray:
    """Paint the lesion into `hu` in place (it moves with its kidney) and return its mask."""
    radius = lesion.radius * max(sphere_profile(z, lesion.z_center, lesion.z_half_extent), 0.5)
    if lesion.kind == "stone":
        radius = max(radius, 1.2 * grid.spacing)  # always covers at least one pixel centre
    cx, cy = _point_in(kidney, lesion.theta, lesion.reach)
    rows, cols = grid.window(cy, radius * 1.3), grid.window(cx, radius * 1.3)
    dx, dy = grid.x[:, cols] - cx, grid.y[rows, :] - cy
    distance = np.sqrt(dx * dx + dy * dy)
    region = hu[rows, cols]  # a view: painting it paints `hu`
    if lesion.kind == "cyst":
        inside = distance <= radius
        region[inside] = lesion.hu
    elif lesion.kind == "stone":
        inside = distance <= radius
        falloff = np.clip(1.6 * (1.0 - (distance / radius) ** 2), 0.0, 1.0)
        region[inside] = (KIDNEY_HU + (lesion.hu - KIDNEY_HU) * falloff)[inside]
    else:
        inside = distance <= radius * _lobulation(np.arctan2(dy, dx), lesion.phases)
        region[inside] = _tumor_texture(grid.x[:, cols], grid.y[rows, :], lesion, z)[inside]
    mask = np.zeros(grid.shape, dtype=bool)
    mask[rows, cols] = inside
    return mask


def _lobulation(angle: np.ndarray, phases: tuple[float, ...]) -> np.ndarray:
    """Relative radius of an irregular, lobulated outline as a function of polar angle."""
    return 1.0 + 0.15 * np.sin(3 * angle + phases[0]) + 0.08 * np.sin(5 * angle + phases[1])


def _tumor_texture(x: np.ndarray, y: np.ndarray, lesion: Lesion, z: int) -> np.ndarray:
    """Heterogeneous soft tissue: a few low-frequency waves around the mean, kept within 20-60 HU."""
    texture = np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32)
    for k, wavelength in enumerate((9.0, 6.0, 4.5)):
        direction = lesion.phases[2 + k]
        phase = lesion.phases[5 + k] + 0.25 * z  # drifts slowly along z
        along = x * math.cos(direction) + y * math.sin(direction)
        texture += np.sin(2 * math.pi * along / wavelength + phase)
    return np.clip(lesion.hu + 7.0 * texture, 20.0, 60.0)


def add_noise(hu: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian image noise, as quantum noise on a CT slice."""
    return hu + rng.standard_normal(size=hu.shape, dtype=np.float32) * np.float32(sigma)


def to_stored_values(hu: np.ndarray, intercept: float = -1024.0) -> np.ndarray:
    """HU (clipped to the scanner range -1024..3071) -> little-endian int16 stored values."""
    return np.rint(np.clip(hu, -1024.0, 3071.0) - intercept).astype("<i2")
