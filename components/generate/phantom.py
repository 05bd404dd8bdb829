"""Abdominal CT phantoms in Hounsfield units: body, organs, spine, two kidneys and one kidney lesion.

Geometry is in millimetres on the axial plane: x runs to the patient's left (image columns), y runs
posterior (image rows), so the spine sits low in the image. Every structure varies smoothly with the
slice position z, so neighbouring slices of one patient are near-identical, as in a real series.

Each patient differs in what a real export differs in: body size, position and rotation on the table;
kidney size, shape and position; organ layout (liver, spleen, aorta, vena cava, bowel with gas, ribs);
the contrast phase (corticomedullary: bright cortex over darker medulla; nephrographic: homogeneous
enhancement), which sets how kidneys, vessels and tumours enhance; and the scanner's reconstruction
kernel (in-plane blur, which also gives lesions partial-volume edges) and noise level (correlated noise,
as in filtered back projection). Lesion sizes span the clinical range: stones 2-8 mm across. A whole export
can be put on one named kernel of KERNELS and a louder or quieter noise level (`with_scanner`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
BONE_HU = 700.0
PERIRENAL_FAT_HU = -90.0
SINUS_HU = -40.0  # renal sinus: fat with the hilar vessels running through it
FIELD_OF_VIEW_MM = 380.0
LESION_KINDS = ("normal", "cyst", "tumor", "stone")
PHASES = ("corticomedullary", "nephrographic")


@dataclass(frozen=True)
class Ellipse:
    """An ellipse centred at (cx, cy) mm with semi-axes (ax, ay) mm, rotated by `angle` radians."""

    cx: float
    cy: float
    ax: float
    ay: float
    angle: float = 0.0

    def mask(self, grid: Grid, scale: float = 1.0) -> np.ndarray:
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

    def rotated(self, angle: float, cx: float, cy: float) -> Ellipse:
        """The ellipse turned by `angle` radians about the point (cx, cy)."""
        cos, sin = math.cos(angle), math.sin(angle)
        dx, dy = self.cx - cx, self.cy - cy
        return Ellipse(cx + dx * cos - dy * sin, cy + dx * sin + dy * cos, self.ax, self.ay, self.angle + angle)


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates in mm of a square matrix covering FIELD_OF_VIEW_MM."""

    x: np.ndarray
    y: np.ndarray
    spacing: float

    @classmethod
    def square(cls, matrix: int, fov_mm: float = FIELD_OF_VIEW_MM) -> Grid:
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
class Enhancement:
    """HU of the enhancing tissues in one patient's contrast phase."""

    phase: str
    cortex: float
    medulla: float
    aorta: float
    vena_cava: float
    liver: float
    spleen: float


@dataclass(frozen=True)
class Organs:
    """The non-renal anatomy that shares the slice with the kidneys (distractors a model must ignore)."""

    liver: Ellipse
    spleen: Ellipse
    aorta: Ellipse
    vena_cava: Ellipse
    bowel: tuple[Ellipse, ...]
    gas: tuple[Ellipse, ...]
    ribs: tuple[Ellipse, ...]
    aortic_calcification: Ellipse | None  # a small dense plaque in the aortic wall: a stone look-alike


@dataclass(frozen=True)
class Reconstruction:
    """The scanner's reconstruction: kernel blur and correlated quantum noise, in mm and HU."""

    blur_mm: float
    noise_sigma: float
    noise_grain_mm: float
    kernel: str | None = None  # the named kernel of KERNELS it follows; None = the patient's own random one


@dataclass(frozen=True)
class NamedKernel:
    """A scanner's named reconstruction kernel: how much it blurs, how fine its noise grain, how loud its noise."""

    blur_mm: float  # Gaussian sigma of the in-plane blur
    noise_grain_mm: float  # Gaussian sigma that correlates the noise (smaller: finer grain)
    noise_gain: float  # noise sigma relative to the patient's dose-given level (a sharp kernel keeps more noise)


# Named kernels (Siemens-style names: B = body, the number = sharpness, f = flash) a whole export can be forced
# onto; a patient's own random kernel (blur 0.3-0.8 mm, grain 0.4-0.8 mm) sits around B45f.
KERNELS = {
    "B30f": NamedKernel(blur_mm=0.9, noise_grain_mm=0.9, noise_gain=0.75),  # soft: smooth edges, coarse blotchy grain
    "B45f": NamedKernel(blur_mm=0.55, noise_grain_mm=0.6, noise_gain=1.0),  # medium: today's average patient
    "B70f": NamedKernel(blur_mm=0.15, noise_grain_mm=0.25, noise_gain=1.5),  # sharp: crisp edges, fine strong grain
}


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
    organs: Organs | None = None
    enhancement: Enhancement | None = None
    reconstruction: Reconstruction | None = None


def sphere_profile(z: float, center: float, half_extent: float) -> float:
    """Relative radius of a sphere's cross-section at distance |z - center| (1 at the centre)."""
    t = min(abs(z - center) / half_extent, 1.0)
    return math.sqrt(1.0 - t * t)


def random_anatomy(rng: np.random.Generator, kind: str, n_slices: int) -> Anatomy:
    """Draw one patient's anatomy and (for a lesion class) one lesion in one kidney."""
    if kind not in LESION_KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}; expected one of {', '.join(LESION_KINDS)}")
    body = Ellipse(rng.uniform(-15, 15), rng.uniform(-15, 10), rng.uniform(125, 175), rng.uniform(95, 130))
    spine_x, spine_y = body.cx + rng.uniform(-4, 4), body.cy + body.ay * rng.uniform(0.45, 0.55)
    vertebra_r = rng.uniform(15, 20)
    kidneys = (_kidney(rng, spine_x, spine_y, -1.0), _kidney(rng, spine_x, spine_y, 1.0))
    enhancement = _enhancement(rng)
    lesion = None if kind == "normal" else _lesion(rng, kind, kidneys, n_slices, enhancement)
    anatomy = Anatomy(
        body=body,
        fat_thickness=rng.uniform(10, 30),
        vertebra=Ellipse(spine_x, spine_y, vertebra_r, vertebra_r * rng.uniform(0.85, 1.0)),
        spinous_process=Ellipse(spine_x, spine_y + vertebra_r + 14, 5, 14),
        kidneys=kidneys,
        kidney_z_half_extent=n_slices * rng.uniform(1.2, 2.0) + 2,
        drift_mm_per_slice=rng.uniform(-0.6, 0.6),
        noise_sigma=rng.uniform(10, 22),
        lesion=lesion,
        organs=_organs(rng, body, spine_x, spine_y, vertebra_r, kidneys),
        enhancement=enhancement,
        reconstruction=Reconstruction(blur_mm=rng.uniform(0.3, 0.8), noise_sigma=0.0,
                                      noise_grain_mm=rng.uniform(0.4, 0.8)),
    )
    return rotate_anatomy(anatomy, rng.uniform(-0.14, 0.14))  # +/- 8 degrees on the table


def with_scanner(anatomy: Anatomy, kernel: str | None = None, noise_scale: float = 1.0) -> Anatomy:
    """The patient reconstructed on the named kernel of KERNELS (None: its own) with its noise sigma scaled.

    With the defaults the anatomy is returned as it is, so an export without these settings is unchanged.
    """
    if kernel is None and noise_scale == 1.0:
        return anatomy
    noise_sigma = anatomy.noise_sigma * noise_scale
    if kernel is None:
        return replace(anatomy, noise_sigma=noise_sigma)
    if kernel not in KERNELS:
        raise ValueError(f"unknown reconstruction kernel {kernel!r}; expected one of {', '.join(KERNELS)}")
    named = KERNELS[kernel]
    reconstruction = Reconstruction(blur_mm=named.blur_mm, noise_sigma=0.0, noise_grain_mm=named.noise_grain_mm,
                                    kernel=kernel)
    return replace(anatomy, noise_sigma=noise_sigma * named.noise_gain, reconstruction=reconstruction)


def rotate_anatomy(anatomy: Anatomy, angle: float) -> Anatomy:
    """The whole patient turned by `angle` radians about the body centre (lesions follow their kidney)."""
    cx, cy = anatomy.body.cx, anatomy.body.cy

    def turn(e: Ellipse | None) -> Ellipse | None:
        return None if e is None else e.rotated(angle, cx, cy)

    organs = anatomy.organs
    if organs is not None:
        organs = Organs(turn(organs.liver), turn(organs.spleen), turn(organs.aorta), turn(organs.vena_cava),
                        tuple(map(turn, organs.bowel)), tuple(map(turn, organs.gas)), tuple(map(turn, organs.ribs)),
                        turn(organs.aortic_calcification))
    return replace(anatomy, body=turn(anatomy.body), vertebra=turn(anatomy.vertebra),
                   spinous_process=turn(anatomy.spinous_process),
                   kidneys=(turn(anatomy.kidneys[0]), turn(anatomy.kidneys[1])), organs=organs)


def _enhancement(rng: np.random.Generator) -> Enhancement:
    """The contrast phase of one study and the HU it gives each enhancing tissue."""
    phase = PHASES[int(rng.integers(0, len(PHASES)))]
    if phase == "corticomedullary":  # ~35 s after injection: cortex bright, medulla not yet
        cortex = rng.uniform(160, 200)
        return Enhancement(phase, cortex, cortex - rng.uniform(40, 70), rng.uniform(220, 300),
                           rng.uniform(90, 130), rng.uniform(60, 80), rng.uniform(90, 130))
    parenchyma = rng.uniform(130, 170)  # ~100 s: homogeneous parenchyma
    return Enhancement(phase, parenchyma, parenchyma - rng.uniform(0, 10), rng.uniform(140, 180),
                       rng.uniform(130, 160), rng.uniform(90, 120), rng.uniform(100, 125))


def _kidney(rng: np.random.Generator, spine_x: float, spine_y: float, side: float) -> Ellipse:
    """A kidney beside the spine (side -1: image left, +1: image right), tilted anteromedially."""
    return Ellipse(
        cx=spine_x + side * rng.uniform(55, 80),
        cy=spine_y - rng.uniform(-4, 16),
        ax=rng.uniform(28, 40),
        ay=rng.uniform(20, 28),
        angle=side * rng.uniform(0.25, 0.8),
    )


def _organs(rng: np.random.Generator, body: Ellipse, spine_x: float, spine_y: float, vertebra_r: float,
            kidneys: tuple[Ellipse, Ellipse]) -> Organs:
    """Liver (image left = patient's right), spleen, great vessels, bowel loops with gas, ribs."""
    front = spine_y - vertebra_r
    liver = Ellipse(body.cx - body.ax * rng.uniform(0.45, 0.6), body.cy - rng.uniform(5, 25),
                    body.ax * rng.uniform(0.32, 0.42), body.ay * rng.uniform(0.4, 0.55), rng.uniform(-0.4, 0.1))
    spleen = Ellipse(kidneys[1].cx + rng.uniform(5, 20), kidneys[1].cy - rng.uniform(35, 50),
                     rng.uniform(18, 30), rng.uniform(10, 16), rng.uniform(-0.8, -0.3))
    aorta_r = rng.uniform(9, 13)
    aorta = Ellipse(spine_x + rng.uniform(5, 15), front - aorta_r - rng.uniform(1, 4), aorta_r, aorta_r)
    vena_cava = Ellipse(spine_x - rng.uniform(18, 28), front - rng.uniform(8, 14), rng.uniform(9, 13),
                        rng.uniform(6, 9), rng.uniform(-0.3, 0.3))
    bowel, gas = [], []
    for _ in range(int(rng.integers(3, 7))):
        loop = Ellipse(body.cx + rng.uniform(-0.5, 0.5) * body.ax, body.cy - rng.uniform(0.15, 0.7) * body.ay,
                       rng.uniform(10, 22), rng.uniform(8, 16), rng.uniform(0, np.pi))
        bowel.append(loop)
        if rng.random() < 0.6:
            gas.append(Ellipse(loop.cx + rng.uniform(-3, 3), loop.cy - loop.ay * 0.4, loop.ax * rng.uniform(0.3, 0.6),
                               loop.ay * rng.uniform(0.2, 0.4), loop.angle))
    ribs = tuple(Ellipse(body.cx + side * body.ax * rng.uniform(0.78, 0.88) * math.cos(a),
                         body.cy + body.ay * rng.uniform(0.78, 0.88) * math.sin(a), rng.uniform(4, 7),
                         rng.uniform(3, 5), a)
                 for side in (-1.0, 1.0) for a in rng.uniform(0.2, 1.1, size=int(rng.integers(1, 3))))
    plaque = None
    if rng.random() < 0.5:  # an aortic wall calcification: a small dense focus outside the kidneys
        angle = rng.uniform(0, 2 * np.pi)
        plaque = Ellipse(aorta.cx + aorta_r * math.cos(angle), aorta.cy + aorta_r * math.sin(angle),
                         rng.uniform(1.0, 2.0), rng.uniform(1.0, 2.0))
    return Organs(liver, spleen, aorta, vena_cava, tuple(bowel), tuple(gas), ribs, plaque)


def _lesion(rng: np.random.Generator, kind: str, kidneys: tuple[Ellipse, Ellipse], n_slices: int,
            enhancement: Enhancement) -> Lesion:
    """Place a lesion of `kind` in a random kidney, sized and positioned for that kind."""
    side = int(rng.integers(0, 2))
    theta = rng.uniform(0, 2 * np.pi)
    z_center = (n_slices - 1) / 2 + rng.uniform(-1.0, 1.0)
    farthest = max(z_center, n_slices - 1 - z_center) + 0.5
    half = farthest * rng.uniform(1.3, 1.8) + 0.5  # the lesion is visible on every slice
    if kind == "cyst":  # simple cyst: water density, sharp wall
        reach, radius, hu = rng.uniform(0.2, 0.5), rng.uniform(10.0, 18.0), rng.uniform(0, 15)
    elif kind == "stone":  # 2-8 mm across, calcium density
        reach, radius, hu = rng.uniform(0.0, 0.5), rng.uniform(1.0, 4.0), rng.uniform(800, 1500)
    else:  # tumor: hypoenhancing solid mass near the outline, bulging out of the kidney
        reach = rng.uniform(0.7, 0.95)
        radius, hu = rng.uniform(15.0, 26.0), enhancement.cortex - rng.uniform(80, 130)
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


DEFAULT_ENHANCEMENT = Enhancement("nephrographic", 150.0, 150.0, 150.0, 140.0, 100.0, 110.0)


def draw_slice(anatomy: Anatomy, z: int, grid: Grid) -> SliceLayers:
    """Paint slice `z` (0-based index in the series) of a patient, without noise."""
    shift = anatomy.drift_mm_per_slice * z
    enhancement = anatomy.enhancement or DEFAULT_ENHANCEMENT
    hu = np.full(grid.shape, AIR_HU, np.float32)
    body = _shifted(anatomy.body, shift, scale=1.0 + 0.004 * z)
    hu[body.mask(grid)] = FAT_HU
    inner = Ellipse(body.cx, body.cy, body.ax - anatomy.fat_thickness, body.ay - anatomy.fat_thickness * 0.8,
                    body.angle)
    hu[inner.mask(grid)] = SOFT_TISSUE_HU
    if anatomy.organs is not None:
        _draw_organs(hu, anatomy.organs, enhancement, shift, z, grid)
    kidney_scale = max(sphere_profile(z, -2.0, anatomy.kidney_z_half_extent), 0.6)
    placed = [_shifted(kidney, shift, kidney_scale) for kidney in anatomy.kidneys]
    kidneys = np.zeros_like(hu, dtype=bool)
    for kidney in placed:
        hu[kidney.mask(grid, 1.3)] = PERIRENAL_FAT_HU
        kidneys |= kidney.mask(grid)
    hu[kidneys] = enhancement.cortex
    if enhancement.medulla != enhancement.cortex:
        for kidney in placed:
            hu[kidney.mask(grid, 0.7)] = enhancement.medulla
    vertebra = _shifted(anatomy.vertebra, shift)
    for kidney in placed:  # renal sinus fat at the hilum
        hu[_hilum(kidney, vertebra).mask(grid)] = SINUS_HU
    hu[vertebra.mask(grid)] = BONE_HU
    hu[_shifted(anatomy.spinous_process, shift).mask(grid)] = BONE_HU
    lesion = np.zeros_like(kidneys)
    if anatomy.lesion is not None:
        lesion = _draw_lesion(hu, anatomy.lesion, z, placed[anatomy.lesion.kidney], grid)
    return SliceLayers(hu=hu, kidneys=kidneys, lesion=lesion)


def _hilum(kidney: Ellipse, vertebra: Ellipse) -> Ellipse:
    """The renal sinus: a small fat ellipse on the kidney's medial (spine-facing) side."""
    dx, dy = vertebra.cx - kidney.cx, vertebra.cy - kidney.cy
    reach = 0.9 * min(kidney.ax, kidney.ay) / max(math.hypot(dx, dy), 1e-6)
    return Ellipse(kidney.cx + dx * reach, kidney.cy + dy * reach, kidney.ax * 0.2, kidney.ay * 0.16, kidney.angle)


def _draw_organs(hu: np.ndarray, organs: Organs, enhancement: Enhancement, shift: float, z: int, grid: Grid) -> None:
    """Paint liver, spleen, bowel (gas inside), vessels and ribs in place."""
    for organ, value in ((organs.liver, enhancement.liver), (organs.spleen, enhancement.spleen)):
        hu[_shifted(organ, shift, 1.0 - 0.01 * z).mask(grid)] = value
    for loop in organs.bowel:
        hu[_shifted(loop, shift).mask(grid)] = 30.0
    for bubble in organs.gas:
        hu[_shifted(bubble, shift).mask(grid)] = AIR_HU
    hu[_shifted(organs.aorta, shift).mask(grid)] = enhancement.aorta
    hu[_shifted(organs.vena_cava, shift).mask(grid)] = enhancement.vena_cava
    if organs.aortic_calcification is not None:
        hu[_shifted(organs.aortic_calcification, shift).mask(grid)] = 800.0
    for rib in organs.ribs:
        hu[_shifted(rib, shift).mask(grid)] = BONE_HU


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
        background = region[inside].copy()
        falloff = np.clip(1.6 * (1.0 - (distance / radius) ** 2), 0.0, 1.0)[inside]
        region[inside] = background + (lesion.hu - background) * falloff
    else:
        inside = distance <= radius * _lobulation(np.arctan2(dy, dx), lesion.phases)
        region[inside] = _tumor_texture(grid.x[:, cols], grid.y[rows, :], lesion, z)[inside]
    mask = np.zeros(grid.shape, dtype=bool)
    mask[rows, cols] = inside
    return mask


def _lobulation(angle: np.ndarray, phases: tuple[float, ...]) -> np.ndarray:
    """Relative radius of an irregular, lobulated outline as a function of polar angle."""
    return 1.0 + 0.15 * np.sin(3 * angle + phases[0]) + 0.08 * np.sin(5 * angle + phases[1])


TUMOR_TEXTURE_HU = 12.0  # amplitude of the heterogeneous enhancement around the tumour's mean


def _tumor_texture(x: np.ndarray, y: np.ndarray, lesion: Lesion, z: int) -> np.ndarray:
    """Heterogeneous soft tissue: a few low-frequency waves around the mean, kept within +/- 20 HU of it."""
    texture = np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32)
    for k, wavelength in enumerate((9.0, 6.0, 4.5)):
        direction = lesion.phases[2 + k]
        phase = lesion.phases[5 + k] + 0.25 * z  # drifts slowly along z
        along = x * math.cos(direction) + y * math.sin(direction)
        texture += np.sin(2 * math.pi * along / wavelength + phase)
    return np.clip(lesion.hu + TUMOR_TEXTURE_HU / 1.5 * texture, lesion.hu - 20.0, lesion.hu + 20.0)


def add_noise(hu: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian image noise, as quantum noise on a CT slice."""
    return hu + rng.standard_normal(size=hu.shape, dtype=np.float32) * np.float32(sigma)


def reconstruct(hu: np.ndarray, anatomy: Anatomy, spacing_mm: float, rng: np.random.Generator) -> np.ndarray:
    """What the scanner makes of the painted slice: kernel blur (partial-volume edges) + correlated noise.

    The noise is white noise smoothed by the kernel's grain and rescaled to the patient's noise level, so
    it has the blotchy texture of filtered back projection rather than per-pixel salt.
    """
    recon = anatomy.reconstruction
    if recon is None:
        return add_noise(hu, anatomy.noise_sigma, rng)
    blurred = gaussian_filter(hu, recon.blur_mm / spacing_mm, mode="nearest")
    grain = gaussian_filter(rng.standard_normal(size=hu.shape, dtype=np.float32), recon.noise_grain_mm / spacing_mm)
    grain *= np.float32(anatomy.noise_sigma / max(float(grain.std()), 1e-6))
    return (blurred + grain).astype(np.float32)


def to_stored_values(hu: np.ndarray, intercept: float = -1024.0) -> np.ndarray:
    """HU (clipped to the scanner range -1024..3071) -> little-endian int16 stored values."""
    return np.rint(np.clip(hu, -1024.0, 3071.0) - intercept).astype("<i2")
