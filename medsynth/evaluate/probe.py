"""The linear probe: how often a linear classifier on pretrained features tells real from generated frames.

Vision-aided GAN (Kumari et al., CVPR 2022) ranks pretrained networks by how well a linear probe on
their features separates real from generated images; here the same test scores the generator. It is
the one number a clinician-facing reader can take at face value: 0.5 means the two sets cannot be told
apart (a coin flip), 1.0 means every frame is classified correctly.

Protocol: equal numbers of real and generated feature vectors (the first min(n_real, n_fake) of each;
callers pass seeded random subsets), stratified k-fold cross-validation with a fixed seed, features
standardised on each training fold, L2-regularised logistic regression (scikit-learn, C = 1). The
accuracy is the mean over the held-out folds, so a classifier that only memorises scores ~0.5. Real
frames must be held out from training (the validation split), or a generator that copies its training
frames would look perfect.

Cine data need one more step. Consecutive frames of a loop are near-identical, so with plain k-fold a
held-out real frame has its twin in the training folds and is recognised by it, not by what real frames
look like. Measured on the phantom (Lite0 features; real = random frames of 64 patients, generated =
one frame per loop of 64 other patients, i.e. independent frames as a generator makes; 3 draws): plain
folds 0.56-0.63 on average, folds that keep real near-duplicate groups together
(`diversity.near_duplicate_groups`, nearest neighbours with MS-SSIM >= 0.8) 0.51-0.56. Generated frames
are not grouped: a generator that repeats itself should be easier to tell apart.
"""

from __future__ import annotations

import warnings

import numpy as np

from medsynth.errors import ConfigError, DataError

FOLDS = 5


def linear_probe_accuracy(real_feats: np.ndarray, fake_feats: np.ndarray, folds: int = FOLDS, seed: int = 0,
                          c: float = 1.0, real_groups: np.ndarray | None = None,
                          fake_groups: np.ndarray | None = None) -> float:
    """Cross-validated accuracy of logistic regression separating real from generated features.

    `real_groups`: a group id per real frame (its cine loop, or `diversity.near_duplicate_groups`); the
    folds never split a group, so a held-out real frame never has a frame of its loop in training.
    `fake_groups` the same for the other side when it is real too (the real-against-real floor).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    real = np.asarray(real_feats, np.float64)
    fake = np.asarray(fake_feats, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise DataError(f"linear probe needs two feature arrays [n, d] of the same d, got {real.shape} "
                        f"and {fake.shape}")
    if not (np.isfinite(real).all() and np.isfinite(fake).all()):
        raise DataError("linear probe: features contain NaN or inf")
    if folds < 2 or c <= 0:
        raise ConfigError(f"linear probe: folds must be >= 2 and C > 0, got folds={folds}, C={c}")
    m = min(len(real), len(fake))
    if m < 2:
        raise DataError(f"linear probe needs at least 2 frames per side, got {len(real)} real, {len(fake)} "
                        "generated")
    x = np.concatenate([real[:m], fake[:m]])
    y = np.repeat([0, 1], m)
    real_ids = _group_ids(real_groups, len(real), m, "real")
    fake_ids = _group_ids(fake_groups, len(fake), m, "generated")  # generated: one group each
    groups = np.concatenate([real_ids, real_ids.max() + 1 + fake_ids])
    n_splits = min(folds, m, len(np.unique(real_ids)), len(np.unique(fake_ids)))
    if n_splits < 2:
        raise DataError("linear probe: one side's frames form a single group (one loop, or all "
                        "near-duplicates); nothing to hold out")
    split = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    with warnings.catch_warnings():
        # Separable folds (the usual case early in training) converge slowly; the accuracy is still exact.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return float(cross_val_score(model, x, y, groups=groups, cv=split, scoring="accuracy").mean())


def _group_ids(groups: np.ndarray | None, count: int, m: int, side: str) -> np.ndarray:
    """0-based ids of the first m frames' groups (each frame its own group when `groups` is None)."""
    if groups is None:
        return np.arange(m)
    groups = np.asarray(groups)
    if groups.shape != (count,):
        raise DataError(f"linear probe: {groups.shape} group ids for {count} {side} frames")
    return np.unique(groups[:m], return_inverse=True)[1]
