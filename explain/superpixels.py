"""SLIC superpixels (Achanta et al., 2012) in numpy: k-means on CIELAB colour plus position, then connected.

Written here instead of pulling scikit-image: its `slic` would bring scipy, imageio, tifffile and
lazy_loader (about 55 MB of wheels) for one function used on 224 px crops.
"""

from __future__ import annotations

import numpy as np

# sRGB (D65) -> CIE XYZ, then XYZ normalised by the D65 white point.
_RGB_TO_XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=np.float64,
)
_D65_WHITE = np.array([0.950456, 1.0, 1.088754])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> CIELAB float32 [H, W, 3] (L in 0..100)."""
    srgb = rgb.astype(np.float64) / 255.0
    linear = np.where(srgb > 0.04045, ((srgb + 0.055) / 1.055) ** 2.4, srgb / 12.92)
    xyz = (linear @ _RGB_TO_XYZ.T) / _D65_WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    lightness = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([lightness, a, b], axis=-1).astype(np.float32)


def _neighbours_4(grid: np.ndarray) -> list[tuple[tuple[slice, slice], tuple[slice, slice]]]:
    """Index pairs (here, there) for the four neighbour directions of a 2-D grid."""
    all_ = slice(None)
    return [
        ((slice(1, None), all_), (slice(None, -1), all_)),
        ((slice(None, -1), all_), (slice(1, None), all_)),
        ((all_, slice(1, None)), (all_, slice(None, -1))),
        ((all_, slice(None, -1)), (all_, slice(1, None))),
    ]


def connected_components(labels: np.ndarray) -> np.ndarray:
    """4-connected components of equal labels, numbered by propagating the smallest pixel index."""
    component = np.arange(labels.size, dtype=np.int64).reshape(labels.shape)
    pairs = _neighbours_4(labels)
    changed = True
    while changed:
        changed = False
        for here, there in pairs:
            same = labels[here] == labels[there]
            smaller = same & (component[there] < component[here])
            if smaller.any():
                component[here] = np.where(smaller, component[there], component[here])
                changed = True
    return component


def _absorb_small_components(component: np.ndarray, min_size: int) -> np.ndarray:
    """Pixels of components under `min_size` join a bordering component (the biggest always stays)."""
    ids, inverse, counts = np.unique(component, return_inverse=True, return_counts=True)
    small = counts < min_size
    small[np.argmax(counts)] = False
    merged = np.where(small[inverse.reshape(component.shape)], -1, component)
    pairs = _neighbours_4(merged)
    while (merged < 0).any():
        for here, there in pairs:
            take = (merged[here] < 0) & (merged[there] >= 0)
            merged[here] = np.where(take, merged[there], merged[here])
    return merged


def slic(rgb: np.ndarray, n_segments: int = 50, compactness: float = 10.0, iterations: int = 10) -> np.ndarray:
    """Superpixel ids int32 [H, W], numbered 0..S-1 with every superpixel 4-connected.

    `compactness` trades colour similarity (low) against square, grid-like shapes (high), as in SLIC.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"slic expects uint8 RGB [H, W, 3], got {rgb.dtype} {rgb.shape}")
    if n_segments < 1:
        raise ValueError(f"n_segments must be >= 1, got {n_segments}")
    height, width = rgb.shape[:2]
    step = max(1.0, float(np.sqrt(height * width / n_segments)))
    lab = rgb_to_lab(rgb)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)

    centre_rows = np.arange(step / 2, height, step)
    centre_cols = np.arange(step / 2, width, step)
    grid_rows, grid_cols = np.meshgrid(centre_rows, centre_cols, indexing="ij")
    centre_position = np.stack([grid_rows.ravel(), grid_cols.ravel()], axis=1).astype(np.float32)
    centre_index = np.clip(centre_position.round().astype(np.int64), 0, [height - 1, width - 1])
    centre_colour = lab[centre_index[:, 0], centre_index[:, 1]].astype(np.float32)

    spatial_scale = (compactness / step) ** 2
    reach = int(np.ceil(step))  # SLIC's local search: a centre only competes within one grid step
    assignment = np.zeros((height, width), dtype=np.int64)
    for _ in range(iterations):
        best = np.full((height, width), np.inf, dtype=np.float32)
        for index, ((row, col), colour) in enumerate(zip(centre_position, centre_colour)):
            top, bottom = max(0, int(row) - reach), min(height, int(row) + reach + 1)
            left, right = max(0, int(col) - reach), min(width, int(col) + reach + 1)
            window = (slice(top, bottom), slice(left, right))
            distance = ((lab[window] - colour) ** 2).sum(axis=2) + spatial_scale * (
                (rows[window] - row) ** 2 + (cols[window] - col) ** 2
            )
            closer = distance < best[window]
            best[window] = np.where(closer, distance, best[window])
            assignment[window] = np.where(closer, index, assignment[window])
        flat = assignment.ravel()
        counts = np.bincount(flat, minlength=len(centre_position)).astype(np.float32)
        used = counts > 0
        for column, coordinate in enumerate((rows, cols)):
            sums = np.bincount(flat, weights=coordinate.ravel(), minlength=len(counts))
            centre_position[used, column] = sums[used] / counts[used]
        for channel in range(3):
            sums = np.bincount(flat, weights=lab[..., channel].ravel(), minlength=len(counts))
            centre_colour[used, channel] = sums[used] / counts[used]

    component = connected_components(assignment)
    min_size = max(1, int(0.25 * height * width / n_segments))
    merged = _absorb_small_components(component, min_size)
    _ids, consecutive = np.unique(merged, return_inverse=True)
    return consecutive.reshape(height, width).astype(np.int32)


def boundaries(segments: np.ndarray) -> np.ndarray:
    """bool [H, W]: True on pixels whose right or lower neighbour lies in another superpixel."""
    edge = np.zeros(segments.shape, dtype=bool)
    edge[:, :-1] |= segments[:, :-1] != segments[:, 1:]
    edge[:-1, :] |= segments[:-1, :] != segments[1:, :]
    return edge
