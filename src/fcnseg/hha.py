"""HHA: a depth map encoded as three image-like channels (Gupta et al., ECCV 2014).

Gupta, Girshick, Arbelaez and Malik ("Learning Rich Features from RGB-D Images for Object
Detection and Segmentation", Section 3) found that a net fine-tuned from ImageNet learns
more from depth re-expressed as three geocentric channels than from raw depth:

- **H**orizontal disparity: ``1 / depth``.
- **H**eight above ground: the height of each point along the gravity direction, relative
  to the lowest point of the scene.
- **A**ngle: the angle between the local surface normal and the gravity direction.

Gravity is estimated from the normals as in Gupta, Arbelaez and Malik (CVPR 2013, "Perceptual
Organization and Recognition of Indoor Scenes from RGB-D Images", Section 3.1): start from
the camera's down axis, collect the normals nearly parallel to it (floors, table tops) and
nearly perpendicular to it (walls), and take as the new estimate the direction most aligned
with the first set and most orthogonal to the second (the eigenvector of the smallest
eigenvalue of ``sum_wall n n^T - sum_floor n n^T``); repeat with a 45 degree, then a 15
degree threshold, 5 iterations each.

Conventions (those of Gupta's released code, ``rcnn-depth``): camera frame x right, y down,
z forward, in metres; normals point away from the camera; the gravity vector points down.
So a floor's normal is parallel to gravity (angle 0), a wall's is perpendicular (90) and a
ceiling's anti-parallel (180). ``encode_hha`` scales the channels to 0..255 exactly as
Gupta's ``saveHHA.m``: disparity ``310 / max(depth, 1 m)`` (``31000 / z`` with z in cm),
height in centimetres, angle ``+ 38`` (``angle + 128 - 90``), each rounded and saturated
to uint8; pixels without depth are 0.

Everything is vectorised numpy (window sums by integral images, batched 3 x 3 eigen
decompositions): a 480 x 640 depth map takes a second or two on one core.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Intrinsics",
    "NYUD_INTRINSICS",
    "HHAGeometry",
    "back_project",
    "surface_normals",
    "estimate_gravity",
    "hha_geometry",
    "encode_hha",
    "depth_to_hha",
]

# The camera's down axis: the first guess for gravity (y points down in the image).
CAMERA_DOWN = (0.0, 1.0, 0.0)
# Gupta et al. 2013: (threshold in degrees, iterations), coarse then fine.
GRAVITY_SCHEDULE = ((45.0, 5), (15.0, 5))


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels; ``(cx, cy)`` in 0-based pixel coordinates (the centre of
    the top-left pixel is (0, 0))."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_matlab(cls, fx: float, fy: float, cx: float, cy: float) -> Intrinsics:
        """Intrinsics calibrated in MATLAB's 1-based pixel coordinates (the NYU toolbox's
        ``camera_params.m``, Gupta's ``getCameraParam.m``, which back-project
        ``meshgrid(1:W, 1:H)``): the principal point moves by one pixel."""
        return cls(fx, fy, cx - 1.0, cy - 1.0)

    def scaled(self, factor: float) -> Intrinsics:
        """The intrinsics of the image resized by ``factor`` (pixel centres map as
        ``(u + 0.5) * factor - 0.5``)."""
        return Intrinsics(
            self.fx * factor,
            self.fy * factor,
            (self.cx + 0.5) * factor - 0.5,
            (self.cy + 0.5) * factor - 0.5,
        )

    def cropped(self, top: int, left: int) -> Intrinsics:
        """The intrinsics of a crop whose first row and column are ``top`` and ``left``."""
        return Intrinsics(self.fx, self.fy, self.cx - left, self.cy - top)


# NYUDv2's colour camera (the NYU Depth V2 toolbox, camera_params.m: fx_rgb, fy_rgb, cx_rgb,
# cy_rgb; the same numbers in Gupta's getCameraParam('color')), for the full 640 x 480 frame.
# Depth maps registered to the colour images (the labelled set) use these. For a crop of
# the frame use ``NYUD_INTRINSICS.cropped(top, left)``.
NYUD_INTRINSICS = Intrinsics.from_matlab(
    fx=5.1885790117450188e02,
    fy=5.1946961112127485e02,
    cx=3.2558244941119034e02,
    cy=2.5373616633400465e02,
)


@dataclass(frozen=True)
class HHAGeometry:
    """The three HHA quantities before scaling, with what they were computed from.

    H x W arrays, NaN where undefined (no depth; no normal for ``angle``).
    """

    disparity: np.ndarray  # 1 / depth, in 1/m
    height: np.ndarray  # metres above the lowest point, along -gravity
    angle: np.ndarray  # degrees between the surface normal and gravity
    gravity: np.ndarray  # (3,) unit vector in the camera frame, pointing down
    normals: np.ndarray  # H x W x 3 unit normals pointing away from the camera
    points: np.ndarray  # H x W x 3 back-projected points, metres


def back_project(depth: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """H x W depth (metres along the optical axis) -> H x W x 3 points in the camera frame."""
    height, width = depth.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    x = (cols - intrinsics.cx) * depth / intrinsics.fx
    y = (rows - intrinsics.cy) * depth / intrinsics.fy
    return np.stack([x, y, depth], axis=-1)


def _box_sum(values: np.ndarray, window: int) -> np.ndarray:
    """Sums of H x W x C ``values`` over the ``window`` x ``window`` square around each pixel
    (zero outside the image), by an integral image."""
    r = window // 2
    padded = np.pad(values, ((r + 1, r), (r + 1, r), (0, 0)))
    integral = padded.cumsum(0).cumsum(1)
    return (
        integral[window:, window:]
        - integral[:-window, window:]
        - integral[window:, :-window]
        + integral[:-window, :-window]
    )


def surface_normals(points: np.ndarray, valid: np.ndarray, window: int = 7) -> np.ndarray:
    """Unit normals of the plane fitted (least squares) to the valid points in the
    ``window`` x ``window`` square around each pixel; H x W x 3, NaN where fewer than three
    valid points or only a line is seen. Normals point away from the camera.

    The fit is the smallest principal axis of the window's covariance, computed for every
    pixel at once from window sums of the points and their products.
    """
    if window < 3 or window % 2 == 0:
        raise ValueError(f"normal window must be an odd number of pixels >= 3, got {window}")
    p = np.where(valid[..., None], np.nan_to_num(points), 0.0)
    outer = (p[..., :, None] * p[..., None, :]).reshape(*p.shape[:2], 9)
    sums = _box_sum(np.concatenate([valid[..., None].astype(np.float64), p, outer], -1), window)
    count = sums[..., 0]
    safe = np.maximum(count, 1.0)[..., None]
    mean = sums[..., 1:4] / safe
    covariance = sums[..., 4:].reshape(*p.shape[:2], 3, 3) / safe[..., None]
    covariance = covariance - mean[..., :, None] * mean[..., None, :]
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    normals = eigenvectors[..., :, 0]
    # a plane needs three points not on one line: the middle axis must have some spread
    planar = (count >= 3) & (eigenvalues[..., 1] > 1e-10 * np.maximum(eigenvalues[..., 2], 1e-30))
    away = np.sign(np.sum(normals * mean, axis=-1))  # Gupta: n . p > 0
    normals = normals * np.where(away == 0, 1.0, away)[..., None]
    return np.where(planar[..., None], normals, np.nan)


def estimate_gravity(
    normals: np.ndarray,
    *,
    initial: Sequence[float] = CAMERA_DOWN,
    schedule: Sequence[tuple[float, int]] = GRAVITY_SCHEDULE,
) -> np.ndarray:
    """The gravity direction (unit, camera frame, pointing down) from a normal field.

    Gupta et al. 2013: at each step, normals within ``threshold`` degrees of the current
    estimate (or of its opposite) are taken as horizontal surfaces, normals within
    ``threshold`` of perpendicular as vertical ones, and the new estimate is the direction
    minimising ``sum_vertical (n . g)^2 - sum_horizontal (n . g)^2``.
    """
    normals = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
    normals = normals[np.isfinite(normals).all(axis=1)]
    gravity = np.asarray(initial, dtype=np.float64)
    gravity = gravity / np.linalg.norm(gravity)
    for threshold, iterations in schedule:
        cos_t, sin_t = np.cos(np.radians(threshold)), np.sin(np.radians(threshold))
        for _ in range(iterations):
            similarity = np.abs(normals @ gravity)
            horizontal = normals[similarity > cos_t]
            vertical = normals[similarity < sin_t]
            if len(horizontal) + len(vertical) == 0:
                raise ValueError(
                    f"cannot estimate gravity: no surface within {threshold} degrees of "
                    "horizontal or vertical; pass gravity= (a down vector in the camera frame)"
                )
            scatter = vertical.T @ vertical - horizontal.T @ horizontal
            _, vectors = np.linalg.eigh(scatter)
            new = vectors[:, 0]
            gravity = new if new @ gravity >= 0 else -new
    return gravity


def _as_depth(depth) -> np.ndarray:
    """A float64 H x W array from a numpy array or tensor (H x W or 1 x H x W)."""
    if hasattr(depth, "detach"):  # a torch tensor
        depth = depth.detach().cpu().numpy()
    array = np.asarray(depth, dtype=np.float64)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(
            f"depth must be an H x W map in metres, got shape {array.shape}: "
            "pass one depth image (divide millimetre PNGs by 1000)"
        )
    return array


def hha_geometry(
    depth,
    intrinsics: Intrinsics = NYUD_INTRINSICS,
    *,
    gravity: Sequence[float] | None = None,
    missing: np.ndarray | None = None,
    normal_window: int = 7,
    gravity_window: int = 21,
) -> HHAGeometry:
    """Disparity, height and angle of every pixel of a depth map (metres).

    ``gravity``: the down direction in the camera frame if known (an accelerometer, a
    levelled rig); by default it is estimated from normals fitted over ``gravity_window``
    pixels (Gupta's 21 x 21), while the angle channel uses ``normal_window`` (7 x 7).
    ``missing``: pixels whose depth was filled in (Gupta's raw-depth holes): they keep their
    disparity and height but are left out of the normal fits. Pixels with a depth that is
    not positive and finite have no value in any channel.
    """
    z = _as_depth(depth)
    has_depth = np.isfinite(z) & (z > 0)
    if not has_depth.any():
        raise ValueError("depth map holds no positive depth: nothing to encode")
    fit = has_depth if missing is None else has_depth & ~np.asarray(missing, dtype=bool)
    points = back_project(np.where(has_depth, z, np.nan), intrinsics)
    normals = surface_normals(points, fit, normal_window)
    if gravity is None:
        gravity = estimate_gravity(surface_normals(points, fit, gravity_window))
    down = np.asarray(gravity, dtype=np.float64)
    if down.shape != (3,) or not np.isfinite(down).all() or np.linalg.norm(down) == 0:
        raise ValueError(f"gravity must be a non-zero 3-vector, got {gravity!r}")
    down = down / np.linalg.norm(down)
    up = -(points @ down)  # NaN where there is no depth
    height = up - np.nanmin(up)  # Gupta: relative to the lowest point (its 0th percentile)
    cosine = np.clip(normals @ down, -1.0, 1.0)
    angle = np.where(has_depth, np.degrees(np.arccos(cosine)), np.nan)
    disparity = np.where(has_depth, 1.0 / np.where(has_depth, z, 1.0), np.nan)
    return HHAGeometry(disparity, height, angle, down, normals, points)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """MATLAB's uint8(): round half away from zero, saturate at 0 and 255, NaN to 0."""
    rounded = np.floor(np.nan_to_num(values, nan=0.0) + 0.5)
    return np.clip(rounded, 0, 255).astype(np.uint8)


def encode_hha(geometry: HHAGeometry) -> np.ndarray:
    """H x W x 3 uint8 HHA image, scaled as Gupta's ``saveHHA.m``.

    Disparity ``31000 / z_cm`` with z at least 100 cm (``310 / max(z, 1 m)``): nearer than
    1.22 m saturates. Height in centimetres (saturating at 2.55 m). Angle ``+ 38`` degrees,
    so horizontal surfaces facing up read 38, vertical ones 128, downward-facing ones 218.
    """
    depth = 1.0 / geometry.disparity
    disparity = 310.0 / np.maximum(depth, 1.0)  # NaN stays NaN -> 0
    height = 100.0 * geometry.height
    angle = geometry.angle + 128.0 - 90.0
    return np.stack([_to_uint8(disparity), _to_uint8(height), _to_uint8(angle)], axis=-1)


def depth_to_hha(
    depth,
    intrinsics: Intrinsics = NYUD_INTRINSICS,
    *,
    gravity: Sequence[float] | None = None,
    missing: np.ndarray | None = None,
) -> np.ndarray:
    """The HHA image (H x W x 3 uint8, as the NYUDv2 ``data/hha`` PNGs) of a depth map in
    metres; see ``hha_geometry`` for ``gravity`` and ``missing``."""
    return encode_hha(hha_geometry(depth, intrinsics, gravity=gravity, missing=missing))
