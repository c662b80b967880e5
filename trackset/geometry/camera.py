"""Camera geometry shared by the stages, with the conventions of FORMATS.md.

- ``E_t`` (extrinsics) is world->camera of frame t: ``x_cam = E_t @ x_world``.
- The pose of camera ``s+k`` in the window's camera 0 is ``E_s @ inv(E_{s+k})``.
- ``(u, v, d)``: pixel coordinates divided by the square image size S, and z in metres.

All functions are vectorised over leading axes; none loops over points or time steps.
"""

from __future__ import annotations

import numpy as np


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (matrices in the last two axes, leading axes broadcast) with the same bits
    under every numpy.

    ``@`` hands float products to the BLAS numpy bundles, whose kernels fuse multiplies and
    adds differently from build to build (numpy 1.26 and 2.4 differ in the last bit of a
    quarter of the elements of a stack of 4x4 products, here), and a last bit is enough to
    move a float32 value of the dataset. Here every element is ``a_i0 b_0k + a_i1 b_1k + ...``
    added left to right, in elementwise operations that round the same way everywhere.

    Examples:
        >>> a = np.arange(8.0).reshape(2, 2, 2)
        >>> bool(np.array_equal(matmul(a, a[:1]), a @ a[:1]))
        True
    """
    a, b = np.asarray(a), np.asarray(b)
    out = a[..., :, :1] * b[..., :1, :]
    for j in range(1, a.shape[-1]):
        out = out + a[..., :, j : j + 1] * b[..., j : j + 1, :]
    return out


def invert_rigid(transforms: np.ndarray) -> np.ndarray:
    """Invert rigid 4x4 transforms (any leading shape) exactly as ``[R^T, -R^T t]``.

    Examples:
        >>> T = np.eye(4); T[:3, 3] = [1.0, 2.0, 3.0]
        >>> invert_rigid(T)[:3, 3].tolist()
        [-1.0, -2.0, -3.0]
    """
    rot = transforms[..., :3, :3]
    trans = transforms[..., :3, 3]
    out = np.zeros_like(transforms)
    rot_t = np.swapaxes(rot, -1, -2)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rot_t, trans)
    out[..., 3, 3] = 1.0
    return out


def window_starts(num_frames: int, window_length: int, stride: int = 1) -> np.ndarray:
    """Start frames of every full window.

    Examples:
        >>> window_starts(12, 10).tolist()
        [0, 1, 2]
        >>> window_starts(5, 10).tolist()
        []
    """
    if num_frames < window_length:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, num_frames - window_length + 1, stride, dtype=np.int64)


def window_frame_indices(starts: np.ndarray, window_length: int) -> np.ndarray:
    """``(W, L)`` frame index of step k of each window."""
    return starts[:, None] + np.arange(window_length)[None, :]


def window_relative_poses(extrinsics: np.ndarray, starts: np.ndarray, window_length: int) -> np.ndarray:
    """Camera motion of each window step in the window's camera 0: ``E_s @ inv(E_{s+k})``.

    Args:
        extrinsics: ``(T, 4, 4)`` world->camera.
        starts: ``(W,)`` window start frames.
        window_length: L.

    Returns:
        ``(W, L, 4, 4)`` float64; step 0 is the identity.

    Examples:
        >>> E = np.stack([np.eye(4)] * 3); E[1, 0, 3] = -0.5  # camera 1 moved +0.5 m in x
        >>> window_relative_poses(E, np.array([0]), 2)[0, 1, 0, 3]
        np.float64(0.5)
    """
    extrinsics = extrinsics.astype(np.float64)
    frames = window_frame_indices(starts, window_length)
    return matmul(extrinsics[starts][:, None], invert_rigid(extrinsics)[frames])


def rotation_to_6d(rotations: np.ndarray) -> np.ndarray:
    """Rotation matrices to 6D: column 0 then column 1 (the script pipeline's order).

    Examples:
        >>> rotation_to_6d(np.eye(3)).tolist()
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    """
    return np.concatenate([rotations[..., :, 0], rotations[..., :, 1]], axis=-1)


def mirror_x(rotations: np.ndarray) -> np.ndarray:
    """Rotations ``(..., 3, 3)`` conjugated by the mirror ``M = diag(-1, 1, 1)``: ``M R M``.

    A rotation seen in an image mirrored about its vertical axis (WiLoR's left-hand crops)
    turns the other way about y and z; ``M R M`` is its rotation in the unmirrored image,
    and its own inverse.

    Examples:
        >>> quarter_z = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # +90 degrees about z
        >>> bool(np.array_equal(mirror_x(quarter_z), quarter_z.T))  # -90 degrees about z
        True
    """
    mirrored = np.array(rotations, dtype=np.float64, copy=True)
    mirrored[..., 0, 1:] *= -1.0
    mirrored[..., 1:, 0] *= -1.0
    return mirrored


def in_image(uvd: np.ndarray) -> np.ndarray:
    """FORMATS.md's in-image rule per position: ``0 <= u <= 1``, ``0 <= v <= 1`` and ``d > 0``.

    Args:
        uvd: ``(..., 3)`` positions; NaN (padding, a point behind the camera) fails.

    Returns:
        ``(...)`` bool. A track or a hand is kept for a window when this holds at every step.

    Examples:
        >>> in_image(np.array([[0.0, 1.0, 0.5], [0.5, 1.01, 1.0], [0.5, 0.5, 0.0], [np.nan, 0.5, 1.0]])).tolist()
        [True, False, False, False]
    """
    u, v, d = uvd[..., 0], uvd[..., 1], uvd[..., 2]
    with np.errstate(invalid="ignore"):
        return (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1) & (d > 0)


def pose_to_9d(poses: np.ndarray) -> np.ndarray:
    """4x4 poses to 9D: rotation column 0, column 1, then translation."""
    return np.concatenate([rotation_to_6d(poses[..., :3, :3]), poses[..., :3, 3]], axis=-1)


def center_crop_box(height: int, width: int) -> tuple[int, int, int]:
    """``(x0, y0, size)`` of the centred square crop.

    Examples:
        >>> center_crop_box(384, 512)
        (64, 0, 384)
    """
    size = min(height, width)
    return (width - size) // 2, (height - size) // 2, size


def crop_resize_intrinsics(intrinsics: np.ndarray, x0: int, y0: int, crop: int, target: int) -> np.ndarray:
    """K (any leading shape) after a crop at ``(x0, y0)`` of side ``crop`` and a resize to ``target``.

    This is FORMATS.md's ``root/intrinsics`` (``cx -= x0``, ``cy -= y0``, rows 0 and 1 times
    ``target / crop``) and the script pipeline's ``transform_intrinsics``, deliberately
    without a half-pixel term. The mapping is exact for a K whose principal point is
    measured from the image's corner (continuous pixel coordinates, ``cx ~ W / 2``); for a K
    in OpenCV's pixel-centre convention, cv2's resize of ``root/video`` maps
    ``x -> (x - x0 + 0.5) s - 0.5``, so projections sit ``(s - 1) / 2`` pixels from it
    (-1/6 px at 384 -> 256). It is kept so that every ``(u, v)`` and ``root/intrinsics``
    agree with the datasets the scripts built and with y2r's tools, which unproject
    ``u * S`` with ``root/intrinsics`` (self-consistent in either convention).

    Examples:
        >>> K = np.array([[400.0, 0, 256], [0, 400.0, 192], [0, 0, 1]])
        >>> crop_resize_intrinsics(K, 64, 0, 384, 256)[0].round(6).tolist()
        [266.666667, 0.0, 128.0]
    """
    out = np.array(intrinsics, dtype=np.float64, copy=True)
    out[..., 0, 2] -= x0
    out[..., 1, 2] -= y0
    out[..., :2, :] *= target / crop
    return out


def backproject(u_px: np.ndarray, v_px: np.ndarray, depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Pixel coordinates and z-depth to camera-frame points ``(..., 3)`` (zero skew).

    Examples:
        >>> K = np.array([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
        >>> backproject(np.array(150.0), np.array(50.0), np.array(2.0), K).tolist()
        [2.0, 0.0, 2.0]
    """
    x = (u_px - intrinsics[0, 2]) / intrinsics[0, 0] * depth
    y = (v_px - intrinsics[1, 2]) / intrinsics[1, 1] * depth
    return np.stack([x, y, depth], axis=-1)
