"""Precision and recall on k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019), plus density/coverage.

Each real feature vector owns a ball whose radius is the distance to its k-th
nearest real neighbour; the union of balls estimates the real manifold, and
the same with generated features estimates the generated one.

- precision: fraction of generated samples inside the real manifold (fidelity);
- recall: fraction of real samples inside the generated manifold (diversity:
  a collapsed generator covers few real samples);
- density and coverage (Naeem et al. 2020): how many real balls contain each
  generated sample (divided by k; about 1 for matching distributions, robust to
  outliers in the real set), and the fraction of real balls holding at least
  one generated sample.

The estimate assumes the real set samples its manifold densely. Cine data is
clustered (the phantom has 8 near-identical frames per loop, 16 per patient):
with k below the cluster size every ball only spans its own patient and
precision/recall of an unseen patient are ~0 (measured: 512 vs 512 phantom
frames of different patients, random-InceptionV3 features: P/R = 0/0 at k=3,
0.80/0.91 at k=16, 0.98/0.97 at k=32). Evaluate on one frame per loop, or use
k above the frames per patient.

Or give each sample its loop (`real_groups`, `fake_groups`): a ball's radius is then the distance to
the k-th nearest sample of *another* loop, so the manifold is estimated from independent samples
however densely a loop is filmed. Generated frames are independent draws: no groups.

Distances are computed block by block, so memory stays at `batch_size` rows
of the distance matrix whatever n is.
"""

from __future__ import annotations

import numpy as np

from medsynth.errors import ConfigError, DataError


def _sq_dists(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def knn_radii(feats: np.ndarray, k: int = 3, batch_size: int = 1024,
              groups: np.ndarray | None = None) -> np.ndarray:
    """Distance of every row to its k-th nearest other row (itself excluded; with `groups`, every row
    of its own group excluded)."""
    x = np.asarray(feats, np.float64)
    if k < 1 or k >= len(x):
        raise ConfigError(f"k-NN radius needs 1 <= k < n, got k={k} with n={len(x)} samples")
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (len(x),):
            raise DataError(f"k-NN radius: {groups.shape} group ids for {len(x)} samples")
        largest = np.unique(groups, return_counts=True)[1].max()
        if len(x) - largest < k:
            raise ConfigError(f"k-NN radius needs k={k} samples outside each group; the largest group "
                              f"holds {largest} of {len(x)}")
    sq = (x * x).sum(1)
    out = np.empty(len(x))
    for s in range(0, len(x), batch_size):
        d = _sq_dists(x[s : s + batch_size], x, sq)
        if groups is None:
            # Index 0 of the sorted row is the point itself (distance 0): the k-th neighbour is at index k.
            out[s : s + batch_size] = np.partition(d, k, axis=1)[:, k]
        else:
            d[groups[s : s + batch_size, None] == groups[None, :]] = np.inf
            out[s : s + batch_size] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return np.sqrt(out)


def precision_recall(real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3,
                     batch_size: int = 1024, real_groups: np.ndarray | None = None,
                     fake_groups: np.ndarray | None = None) -> dict[str, float]:
    """{'precision', 'recall', 'density', 'coverage'} of generated vs real features (same extractor);
    `*_groups`: each sample's loop, when a set is filmed in loops (see the module doc)."""
    real = np.asarray(real_feats, np.float64)
    fake = np.asarray(fake_feats, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise DataError(f"precision/recall need two feature arrays [n, d] of the same d, "
                        f"got {real.shape} and {fake.shape}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    r_real = knn_radii(real, k, batch_size, real_groups)
    r_fake = knn_radii(fake, k, batch_size, fake_groups)
    real_sq = (real * real).sum(1)

    in_real = np.zeros(len(fake), bool)  # fake j inside some real ball (precision)
    real_balls_hit = np.zeros(len(fake), np.int64)  # number of real balls holding fake j (density)
    covered = np.zeros(len(real), bool)  # real i's ball holds a fake (coverage)
    in_fake = np.zeros(len(real), bool)  # real i inside some fake ball (recall)
    for s in range(0, len(fake), batch_size):
        # Distances of a block of fakes to all reals: [block, n_real].
        d = np.sqrt(_sq_dists(fake[s : s + batch_size], real, real_sq))
        inside = d <= r_real[None, :]
        in_real[s : s + batch_size] = inside.any(1)
        real_balls_hit[s : s + batch_size] = inside.sum(1)
        covered |= inside.any(0)
        in_fake |= (d <= r_fake[s : s + batch_size, None]).any(0)
    return {
        "precision": float(in_real.mean()),
        "recall": float(in_fake.mean()),
        "density": float(real_balls_hit.sum() / (k * len(fake))),
        "coverage": float(covered.mean()),
    }
