"""HHA on rendered rooms whose geometry is known: every channel against its analytic value."""

import numpy as np
import pytest
import torch

from fcnseg.hha import (
    NYUD_INTRINSICS,
    Intrinsics,
    back_project,
    depth_to_hha,
    encode_hha,
    estimate_gravity,
    hha_geometry,
    surface_normals,
)

FLOOR, BACK, LEFT, RIGHT, CEILING = range(5)
TRUE_ANGLE = {FLOOR: 0.0, BACK: 90.0, LEFT: 90.0, RIGHT: 90.0, CEILING: 180.0}
SMALL = NYUD_INTRINSICS.scaled(0.25)  # 160 x 120 frames keep the tests fast
SHAPE = (120, 160)


def _rotation(pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation: world x right, y up, z forward; the camera pitched down
    by ``pitch`` and rolled by ``roll`` degrees (camera y points down)."""
    p, r = np.radians(pitch), np.radians(roll)
    rot_x = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rot_z = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rot_x @ rot_z @ np.diag([1.0, -1.0, 1.0])


def render_room(intrinsics, shape, *, pitch=0.0, roll=0.0, camera_height=1.3, ceiling=2.6):
    """Ray-cast a box room: floor y = 0, ceiling, back wall z = 4 m, side walls at x = -2 m
    and x = 2.2 m. Returns depth (m), the plane hit, the world height of every point and
    gravity (down) in the camera frame."""
    height, width = shape
    rotation = _rotation(pitch, roll)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack(
        [(cols - intrinsics.cx) / intrinsics.fx, (rows - intrinsics.cy) / intrinsics.fy],
        axis=-1,
    )
    rays = np.concatenate([rays, np.ones((height, width, 1))], -1) @ rotation.T  # z_cam = 1
    x, y, z = rays[..., 0], rays[..., 1], rays[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        hits = np.stack(
            [
                np.where(y < 0, -camera_height / y, np.inf),
                np.where(z > 0, 4.0 / z, np.inf),
                np.where(x < 0, -2.0 / x, np.inf),
                np.where(x > 0, 2.2 / x, np.inf),
                np.where(y > 0, (ceiling - camera_height) / y, np.inf),
            ]
        )
    plane, depth = hits.argmin(0), hits.min(0)  # depth along the optical axis: z_cam = 1
    world_height = camera_height + depth * y
    gravity = rotation.T @ np.array([0.0, -1.0, 0.0])
    return depth, plane, world_height, gravity


def interior(plane: np.ndarray, window: int) -> np.ndarray:
    """Pixels whose whole window lies on their own plane (no mixed normals there)."""
    r = window // 2
    padded = np.pad(plane, r, mode="edge")
    views = np.lib.stride_tricks.sliding_window_view(padded, (window, window))
    return (views == plane[..., None, None]).all(axis=(-1, -2))


def angle_between(a, b) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b), -1.0, 1.0))))


def test_nyud_intrinsics_are_the_toolbox_values_in_zero_based_pixels():
    # camera_params.m of the NYU Depth V2 toolbox (fx_rgb, fy_rgb, cx_rgb, cy_rgb), 1-based
    assert NYUD_INTRINSICS == Intrinsics(518.85790117450188, 519.46961112127485, 324.58244941119034, 252.73616633400465)  # fmt: skip
    assert Intrinsics.from_matlab(1.0, 2.0, 3.0, 4.0) == Intrinsics(1.0, 2.0, 2.0, 3.0)


def test_back_projection_reprojects_and_crops_consistently():
    depth = np.random.default_rng(0).uniform(0.5, 5.0, size=(30, 40))
    points = back_project(depth, SMALL)
    cols = SMALL.fx * points[..., 0] / points[..., 2] + SMALL.cx
    rows = SMALL.fy * points[..., 1] / points[..., 2] + SMALL.cy
    np.testing.assert_allclose(cols, np.broadcast_to(np.arange(40), (30, 40)), atol=1e-9)
    np.testing.assert_allclose(rows, np.broadcast_to(np.arange(30)[:, None], (30, 40)), atol=1e-9)
    cropped = back_project(depth[5:, 7:], SMALL.cropped(top=5, left=7))
    np.testing.assert_allclose(cropped, points[5:, 7:], atol=1e-12)


def test_channels_match_the_scene_with_gravity_given():
    depth, plane, world_height, gravity = render_room(SMALL, SHAPE, pitch=15, roll=5)
    geometry = hha_geometry(depth, SMALL, gravity=gravity)
    np.testing.assert_array_equal(geometry.disparity, 1.0 / depth)  # exact
    # the floor is the lowest surface: height above the lowest point = height above floor
    np.testing.assert_allclose(geometry.height[plane == FLOOR], 0.0, atol=1e-9)
    np.testing.assert_allclose(geometry.height, world_height, atol=1e-9)
    inside = interior(plane, 7)
    for surface, expected in TRUE_ANGLE.items():
        mask = inside & (plane == surface)
        if surface != CEILING:
            assert mask.sum() > 100, f"surface {surface} barely visible"
        np.testing.assert_allclose(geometry.angle[mask], expected, atol=1e-3)


def test_ceiling_faces_away_from_gravity():
    depth, plane, _, gravity = render_room(SMALL, SHAPE, pitch=-30, ceiling=2.4)
    geometry = hha_geometry(depth, SMALL, gravity=gravity)
    mask = interior(plane, 7) & (plane == CEILING)
    assert mask.sum() > 100
    np.testing.assert_allclose(geometry.angle[mask], 180.0, atol=1e-3)


@pytest.mark.parametrize(("pitch", "roll"), [(0.0, 0.0), (15.0, 5.0), (-10.0, -12.0)])
def test_gravity_is_estimated_from_the_normals(pitch, roll):
    depth, plane, world_height, gravity = render_room(SMALL, SHAPE, pitch=pitch, roll=roll)
    geometry = hha_geometry(depth, SMALL)
    assert angle_between(geometry.gravity, gravity) < 1.0
    np.testing.assert_allclose(geometry.height, world_height, atol=0.06)  # 1 deg over 4 m
    inside = interior(plane, 7)
    for surface in (FLOOR, BACK):
        mask = inside & (plane == surface)
        np.testing.assert_allclose(geometry.angle[mask], TRUE_ANGLE[surface], atol=1.0)


def test_gravity_estimate_recovers_a_tilt_beyond_the_fine_threshold():
    """Gupta's schedule starts at 45 degrees: a camera tilted by 30 still converges."""
    depth, _, _, gravity = render_room(SMALL, SHAPE, pitch=30, roll=0)
    points = back_project(depth, SMALL)
    normals = surface_normals(points, np.ones(SHAPE, bool), window=21)
    assert angle_between(estimate_gravity(normals), gravity) < 1.0


def test_encoding_follows_gupta_scaling():
    depth, plane, world_height, gravity = render_room(SMALL, SHAPE, pitch=15, roll=5)
    hha = depth_to_hha(depth, SMALL, gravity=gravity)
    assert hha.shape == (*SHAPE, 3) and hha.dtype == np.uint8
    disparity = np.clip(np.floor(310.0 / np.maximum(depth, 1.0) + 0.5), 0, 255)  # 31000/z_cm
    np.testing.assert_array_equal(hha[..., 0], disparity.astype(np.uint8))
    height_cm = np.clip(np.floor(100 * world_height + 0.5), 0, 255)
    # rounding can flip where 100 h sits on a half: allow one level
    assert np.abs(hha[..., 1].astype(int) - height_cm).max() <= 1
    inside = interior(plane, 7)
    assert (hha[..., 2][inside & (plane == FLOOR)] == 38).all()  # 0 + 128 - 90
    assert (hha[..., 2][inside & (plane == BACK)] == 128).all()  # 90 + 128 - 90


def test_missing_depth_is_zero_and_filled_depth_keeps_disparity_and_height():
    depth, plane, _, gravity = render_room(SMALL, SHAPE, pitch=15, roll=5)
    holes = np.zeros(SHAPE, bool)
    holes[40:50, 60:70] = True
    hha = depth_to_hha(np.where(holes, 0.0, depth), SMALL, gravity=gravity)
    assert (hha[holes] == 0).all()
    filled = hha_geometry(depth, SMALL, gravity=gravity, missing=holes)
    np.testing.assert_array_equal(filled.disparity, 1.0 / depth)
    assert np.isfinite(filled.angle[41, 61])  # its neighbours outside the hole fit a plane
    assert np.isnan(filled.angle[45, 65])  # 7 x 7 window inside the hole: no support


def test_accepts_a_depth_tensor_and_rejects_bad_input():
    depth, _, _, gravity = render_room(SMALL, SHAPE)
    from_tensor = depth_to_hha(torch.from_numpy(depth)[None].float(), SMALL, gravity=gravity)
    assert from_tensor.shape == (*SHAPE, 3)
    with pytest.raises(ValueError, match="H x W map in metres"):
        hha_geometry(np.ones((2, 4, 4)), SMALL)
    with pytest.raises(ValueError, match="no positive depth"):
        hha_geometry(np.zeros((8, 8)), SMALL)
    with pytest.raises(ValueError, match="non-zero 3-vector"):
        hha_geometry(depth, SMALL, gravity=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="odd number"):
        surface_normals(back_project(depth, SMALL), np.ones(SHAPE, bool), window=4)


def test_encode_matches_the_geometry_it_is_given():
    depth, _, _, gravity = render_room(SMALL, SHAPE, pitch=5)
    geometry = hha_geometry(depth, SMALL, gravity=gravity)
    np.testing.assert_array_equal(encode_hha(geometry), depth_to_hha(depth, SMALL, gravity=gravity))
