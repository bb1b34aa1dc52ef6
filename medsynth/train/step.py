"""The adversarial update: D's step then G's step, in one compiled function.

Written once for every strategy: each replica draws its slice of the *global*
latent batch from a stateless seed (so one device and N replicas see the same
numbers, and a resumed run draws what the uninterrupted one would have).

By default D sees real and generated frames in one batch (the projected head too: measured at 64 px,
Lite0, seed 0, its heads' batch norm on batches of one kind, as Projected GAN runs it, gave white
streaks all alike by step 360 where the joint batch gave catheters and vessels). `separate_passes`
runs D once on the real and once on the generated batch, as Projected GAN does (loss.py), and G's
update then judges only its own frames. `fresh_draws` gives G's update its own latents and
augmentation (stream 1), as every phase of Projected GAN and StyleGAN2-ADA draws its own; by default
one G forward pass serves both updates. The paper's head,
BN(center=False, scale=False) → Dense(1, no bias), needs that: on a batch of
one kind it would standardise the features to zero mean, and D's mean logit
would be 0 for real and generated frames alike (measured: with a learning
MobileNetV2 fed separate batches, D stayed at D(x) = D(G(z)) = 0.5).

With key points (`condition="keypoints"`) a batch is (frames, points, classes, mask): their heat maps
are drawn here, G draws each generated frame for its real frame's key points, D judges every frame
with its heat maps, and DiffAugment moves the heat maps with their frame. The matching-aware term
(Reed et al. 2016) shows D the real frames with their neighbour's key points as fake, in a second
pass over [real'; fake], so D's batch statistics stay those of a [real; fake] batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, NamedTuple

import tensorflow as tf

from medsynth.errors import ConfigError
from medsynth.train.augment import CUTOUT, UNIFORMS, diff_augment, diff_augment_with_maps
from medsynth.train.fastpath import FastPath
from medsynth.train.loss import discriminator_loss, generator_loss, mismatch_loss

SAMPLE_STREAM = 2**31 - 1  # seed stream of the fixed latent batch used for sample grids


def _step_key(seed: int, step: tf.Tensor, stream: int, family: int = 0) -> tf.Tensor:
    """Stateless seed of one step's random numbers: a function of (seed, step, stream) alone, so
    any number of replicas, and a resumed run, draw the same ones; `family` keeps kinds apart."""
    return tf.stack([tf.cast(seed, tf.int64) + family, tf.cast(step, tf.int64) * 2 + stream])


def latent_batch(seed: int, step: tf.Tensor, stream: int, n: int, latent_dim: int) -> tf.Tensor:
    """The global latent batch of (seed, step, stream): same numbers on any number of replicas."""
    return tf.random.stateless_normal([n, latent_dim], seed=_step_key(seed, step, stream))


def augment_uniforms(seed: int, step: tf.Tensor, stream: int, n: int, on: bool = True) -> tf.Tensor:
    """DiffAugment's numbers for one step [2 updates, 2·n frames ([real; fake]), UNIFORMS]
    (none when `on` is False): like the latents, the same on any number of replicas."""
    key = _step_key(seed, step, stream, family=2**31)
    return tf.random.stateless_uniform([2, 2 * n, UNIFORMS if on else 0], seed=key)


def sample_latents(seed: int, n: int, latent_dim: int) -> tf.Tensor:
    return latent_batch(seed, tf.constant(SAMPLE_STREAM, tf.int64), 0, n, latent_dim)


def split_frozen_discriminator(discriminator: tf.keras.Model) -> tuple[tf.keras.Model, tf.keras.Model] | None:
    """(features, head) sharing D's layers when only D's head learns, else None.

    `features` maps frames to the frozen features (the pooled backbone features, layer "features"
    of medsynth.models.discriminator, or the projected head's mixed maps, sub-model "d_features"),
    `head` maps those to logits; together they are D.
    """
    names = {layer.name for layer in discriminator.layers}
    if {"d_features", "d_head"} <= names:
        return discriminator.get_layer("d_features"), discriminator.get_layer("d_head")
    try:
        pooled = discriminator.get_layer("features")
        norm, logit = discriminator.get_layer("head_norm"), discriminator.get_layer("logit")
    except ValueError:
        return None
    features = tf.keras.Model(discriminator.inputs, pooled.output, name="d_features")
    x = tf.keras.Input(shape=pooled.output.shape[1:], dtype=pooled.output.dtype)
    head = tf.keras.Model(x, logit(norm(x)), name="d_head")
    if {id(v) for v in head.trainable_variables} != {id(v) for v in discriminator.trainable_variables}:
        return None  # the backbone learns too: D must run whole
    return features, head


def _frame_probability(logits: tf.Tensor) -> tf.Tensor:
    """D's probability that each frame is real: the mean over its patches' (one logit: that one's)."""
    p = tf.sigmoid(tf.cast(logits, tf.float32))
    return tf.reduce_mean(tf.reshape(p, [tf.shape(p)[0], -1]), axis=1)


class _Frozen(NamedTuple):
    """What D's head reads when only the head learns: the frozen features of the real and of the
    generated frames, kept apart (G's gradient reaches the generated ones through a concatenation, not
    through a slice of [real; fake], whose gradient would fill a [real; fake]-sized tensor of zeros),
    and with key points their heat maps as augmented with the frames [2n] and the mismatched ones of
    the real frames [n] (or None)."""

    real: Any
    fake: Any
    maps: tf.Tensor | None = None
    wrong_maps: tf.Tensor | None = None

    def features(self, fake_gradient: bool) -> Any:
        """The features of [real; fake]; G's gradient flows into the generated half if `fake_gradient`."""
        def join(r: tf.Tensor, f: tf.Tensor) -> tf.Tensor:
            return tf.concat([tf.stop_gradient(r), f if fake_gradient else tf.stop_gradient(f)], 0)

        return tf.nest.map_structure(join, self.real, self.fake)


def mismatched(maps: tf.Tensor) -> tf.Tensor:
    """Each frame gets its neighbour's key points: frames 0 and 1 swap, 2 and 3, ... (the batch is
    shuffled, so the pairs are random; pairs, unlike a roll, are the same on any number of replicas)."""
    i = tf.range(tf.shape(maps)[0])
    return tf.gather(maps, i + 1 - 2 * (i % 2))


@dataclass
class AdversarialStep:
    generator: tf.keras.Model
    discriminator: tf.keras.Model
    g_optimizer: tf.keras.optimizers.Optimizer
    d_optimizer: tf.keras.optimizers.Optimizer
    global_batch_size: int
    latent_dim: int
    seed: int
    label_smoothing: float = 0.0
    strategy: tf.distribute.Strategy | None = None
    r1_gamma: float = 0.0  # weight of the R1 penalty on D's gradient at real frames (0: off)
    hvd: Any = None  # horovod.tensorflow when each process is one Horovod rank
    jit_compile: bool = False  # XLA-compile the per-replica update
    augment: tuple[str, ...] = ()  # DiffAugment transformations of D's inputs (medsynth.train.augment)
    loss: str = "bce"  # medsynth.train.loss.LOSSES
    # "keypoints": batches are (frames, points, classes, mask) and G and D take the heat maps too
    condition: str = "none"
    keypoint_mismatch: float = 0.0  # weight of D's matching-aware term (conditional only; 0: off)
    cutout: float = CUTOUT  # DiffAugment's cutout side, as a share of the frame's
    separate_passes: bool = False  # D on the real and the generated batch apart (Projected GAN)
    fresh_draws: bool = False  # G's update draws its own latents and augmentation (Projected GAN)
    fast_path: FastPath | None = None  # computes the frozen features (medsynth.train.fastpath)

    def __post_init__(self) -> None:
        self.strategy = self.strategy or tf.distribute.get_strategy()
        self.conditional = self.condition == "keypoints"
        self.mismatch = self.keypoint_mismatch if self.conditional else 0.0
        if self.mismatch:
            replicas = self.strategy.num_replicas_in_sync * (self.hvd.size() if self.hvd is not None else 1)
            if (self.global_batch_size // replicas) % 2:
                raise ConfigError(
                    f"--keypoint-mismatch pairs the frames of each replica's batch, and {replicas} "
                    f"replica(s) of --batch-size {self.global_batch_size} get an odd number: use a batch "
                    "of an even number per replica, or --keypoint-mismatch 0"
                )
        self._split = split_frozen_discriminator(self.discriminator)
        if self._split is not None and self.fast_path is not None:  # built now: after any restore
            with self.strategy.scope():
                self._split = (self.fast_path.features(self._split[0]), self._split[1])
        both = self._both
        if self.jit_compile:
            # Keras' pattern: the per-replica update is compiled, the strategy runs it on every replica.
            both = tf.function(self._both, jit_compile=True, reduce_retracing=True)
        self._replica_step = both
        self.train_step = tf.function(self._train_step, reduce_retracing=True)
        self.d_step = tf.function(self._distributed(self._d_update, 0), reduce_retracing=True)
        self.g_step = tf.function(self._distributed(self._g_update, 1), reduce_retracing=True)
        self.agree = tf.function(self._agree, reduce_retracing=True)

    # --- per replica -----------------------------------------------------------------------------
    def _replica_id(self) -> tf.Tensor:
        ctx = tf.distribute.get_replica_context()
        rid = ctx.replica_id_in_sync_group
        if self.hvd is not None:
            rid = rid + self.hvd.rank()
        return rid

    def _my_latents(self, z: tf.Tensor, local: tf.Tensor) -> tf.Tensor:
        """This replica's slice of the global latent batch `z`."""
        start = self._replica_id() * local
        return z[start : start + local]

    def _my_uniforms(self, u: tf.Tensor, local: tf.Tensor) -> tf.Tensor:
        """This replica's rows of the global augmentation numbers `u` [2, 2·global, ·]: its real
        frames' rows, then its generated frames' (each update's D batch is [real; fake])."""
        start = self._replica_id() * local
        fake = self.global_batch_size + start
        return tf.concat([u[:, start : start + local], u[:, fake : fake + local]], 1)

    def _tape(self, tape: tf.GradientTape) -> tf.GradientTape:
        """Under Horovod the tape sums gradients over ranks (losses are already / global batch)."""
        if self.hvd is None:
            return tape
        return self.hvd.DistributedGradientTape(tape, op=self.hvd.Sum)

    def _unpack(self, batch: Any) -> tuple[tf.Tensor, tf.Tensor | None]:
        """(frames, their key points' heat maps or None) of a feed batch: frames alone, or with key
        points (frames, points, classes, mask)."""
        if not self.conditional:
            return batch, None
        from medsynth.data.keypoints import heatmaps

        frames, points, classes, mask = batch
        return frames, heatmaps(points, classes, mask, int(frames.shape[1]))

    def _generate(self, z: tf.Tensor, maps: tf.Tensor | None) -> tf.Tensor:
        return self.generator(z if maps is None else [z, maps], training=True)

    def _augment(self, frames: tf.Tensor, maps: tf.Tensor | None, u: tf.Tensor) -> tuple[tf.Tensor, Any]:
        if maps is None:
            return diff_augment(frames, u, self.augment, self.cutout), None
        return diff_augment_with_maps(frames, maps, u, self.augment, self.cutout)

    def _judge(self, frames: tf.Tensor, maps: tf.Tensor | None) -> tf.Tensor:
        return self.discriminator(frames if maps is None else [frames, maps], training=True)

    def _head(self, features: Any, maps: tf.Tensor | None) -> tf.Tensor:
        head = self._split[1]
        return head(features if maps is None else [*tf.nest.flatten(features), maps], training=True)

    def _passes(self, judge: Any, local: tf.Tensor, part: str) -> tf.Tensor:
        """Logits of `part` ("both": [real; fake], "real", "fake") of a [real; fake] batch: `judge(rows)`
        judges the rows of that batch, in one pass, or with `separate_passes` one per kind."""
        if not self.separate_passes:
            logits = judge(slice(None))
            return {"both": logits, "real": logits[:local], "fake": logits[local:]}[part]
        parts = {"real": lambda: judge(slice(None, local)), "fake": lambda: judge(slice(local, None))}
        if part != "both":
            return parts[part]()
        return tf.concat([parts["real"](), parts["fake"]()], 0)

    def _discriminate(
        self, real: tf.Tensor, fake: tf.Tensor, u: tf.Tensor, maps: tf.Tensor | None = None,
        real_maps: tf.Tensor | None = None, part: str = "both",
    ) -> tf.Tensor:
        """D's logits of `part` of [real; fake], augmented with the numbers `u` (one row per frame);
        with key points each fake frame's are its real frame's (`maps`), the real ones' `real_maps`
        when given (the matching-aware term)."""
        frames = tf.concat([real, tf.cast(fake, real.dtype)], 0)
        both = None if maps is None else tf.concat([maps if real_maps is None else real_maps, maps], 0)

        def judge(rows: slice) -> tf.Tensor:
            return self._judge(*self._augment(frames[rows], None if both is None else both[rows], u[rows]))

        return self._passes(judge, tf.shape(real)[0], part)

    def _judge_features(self, features: Any, maps: tf.Tensor | None, local: tf.Tensor,
                        part: str = "both") -> tf.Tensor:
        """D's head on frozen features of [real; fake] (and their heat maps): logits of `part`."""
        def judge(rows: slice) -> tf.Tensor:
            return self._head(tf.nest.map_structure(lambda f: f[rows], features),
                              None if maps is None else maps[rows])

        return self._passes(judge, local, part)

    def _frozen(self, real: tf.Tensor, fake: tf.Tensor, maps: tf.Tensor | None, u: tf.Tensor,
                tape: tf.GradientTape | None = None, with_real: bool = True) -> _Frozen:
        """The frozen features of the augmented real (if `with_real`) and generated frames, `u` one row
        per frame of [real; fake]. Without G's `tape` both kinds run as one batch (the frozen features
        have no batch statistics); with it the real frames' pass stays off the tape."""
        local = tf.shape(real)[0]
        features = self._split[0]
        off_tape = tape.stop_recording if tape is not None else contextlib.nullcontext
        real_features = real_maps = wrong_maps = None
        if with_real:
            with off_tape():
                aug_real, real_maps = self._augment(real, maps, u[:local])
                if self.mismatch:  # the other frame's key points, moved as this frame was
                    wrong_maps = self._augment(real, mismatched(maps), u[:local])[1]
        aug_fake, fake_maps = self._augment(tf.cast(fake, real.dtype), maps, u[local:])
        if not with_real:
            fake_features = features(aug_fake, training=True)
        elif tape is None:
            joint = features(tf.concat([aug_real, aug_fake], 0), training=True)
            real_features = tf.nest.map_structure(lambda f: f[:local], joint)
            fake_features = tf.nest.map_structure(lambda f: f[local:], joint)
        else:
            with off_tape():
                real_features = features(aug_real, training=True)
            fake_features = features(aug_fake, training=True)
        both_maps = fake_maps if maps is None or not with_real else tf.concat([real_maps, fake_maps], 0)
        return _Frozen(real_features, fake_features, both_maps, wrong_maps)

    def _d_update(self, batch: Any, z: tf.Tensor, u: tf.Tensor) -> dict[str, tf.Tensor]:
        real, maps = self._unpack(batch)
        local = tf.shape(real)[0]
        z, u = self._my_latents(z, local), self._my_uniforms(u, local)
        fake = tf.stop_gradient(self._generate(z, maps))
        # R1 needs D's input gradient at the real frames, which only D run whole traces
        frozen = None if self._split is None or self.r1_gamma > 0 else self._frozen(real, fake, maps, u[0])
        return self._d_update_on(real, fake, u[0], maps, frozen)

    def _d_update_on(
        self, real: tf.Tensor, fake: tf.Tensor, u: tf.Tensor, maps: tf.Tensor | None = None,
        frozen: _Frozen | None = None,
    ) -> dict[str, tf.Tensor]:
        """D's update on `real` and generated `fake` (or, frozen backbone, their `frozen` features)."""
        local = tf.shape(real)[0]
        fake = tf.stop_gradient(fake)
        wrong_logits = None
        with tf.GradientTape() as tape:
            with tf.GradientTape(watch_accessed_variables=False) as at_real:
                at_real.watch(real)
                if frozen is None:
                    logits = self._discriminate(real, fake, u, maps)
                    if self.mismatch:
                        wrong_logits = self._discriminate(real, fake, u, maps, mismatched(maps), "real")
                else:
                    features = frozen.features(fake_gradient=False)
                    logits = self._judge_features(features, frozen.maps, local)
                    if self.mismatch:
                        wrong = tf.concat([frozen.wrong_maps, frozen.maps[local:]], 0)
                        wrong_logits = self._judge_features(features, wrong, local, "real")
                real_logits, fake_logits = logits[:local], logits[local:]
                real_sum = tf.reduce_sum(tf.cast(real_logits, tf.float32))
            loss = discriminator_loss(real_logits, fake_logits, self.global_batch_size, self.label_smoothing,
                                      self.loss)
            if wrong_logits is not None:
                loss += self.mismatch * mismatch_loss(wrong_logits, self.global_batch_size, self.loss)
            penalty = self._r1(at_real, real_sum, real) if self.r1_gamma > 0 else tf.constant(0.0)
            scaled = self._scale(self.d_optimizer, loss + penalty)
        grads = self._tape(tape).gradient(scaled, self.discriminator.trainable_variables)
        grads = self._unscale(self.d_optimizer, grads)
        self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_variables, strict=True))
        n = float(self.global_batch_size)
        out = {
            "d_loss": loss,
            "r1_penalty": penalty,
            "d_real": tf.reduce_sum(_frame_probability(real_logits)) / n,
            "d_fake": tf.reduce_sum(_frame_probability(fake_logits)) / n,
        }
        if wrong_logits is not None:  # D's probability that a frame with another's key points is real
            out["d_mismatch"] = tf.reduce_sum(_frame_probability(wrong_logits)) / n
        return out

    def _r1(self, tape: tf.GradientTape, real_sum: tf.Tensor, real: tf.Tensor) -> tf.Tensor:
        """γ/2 · E‖∇ₓD(x)‖² at real frames (Mescheder et al. 2018, StyleGAN2).

        The usual remedy when D overpowers G (StyleGAN2 uses γ ≈ 0.0002·size²/batch). Off by
        default: measured here, it did not let a MobileNetV2 trained from scratch teach G the
        phantom within 400 steps at 32 px (γ 0.01–10), and it doubles D's backward cost.
        """
        grad = tape.gradient(real_sum, real)
        if grad is None:  # a frozen backbone: D's input gradient at real frames is not traced
            return tf.constant(0.0)
        per_example = tf.reduce_sum(tf.square(tf.cast(grad, tf.float32)), axis=[1, 2, 3])
        penalty = 0.5 * self.r1_gamma * per_example
        return tf.nn.compute_average_loss(penalty, global_batch_size=self.global_batch_size)

    def _g_update(self, batch: Any, z: tf.Tensor, u: tf.Tensor) -> dict[str, tf.Tensor]:
        real, maps = self._unpack(batch)
        local = tf.shape(real)[0]
        z, u = self._my_latents(z, local), self._my_uniforms(u, local)
        with tf.GradientTape() as tape:
            fake = self._generate(z, maps)
            frozen = None
            if self._split is not None:  # G's loss on separate passes reads the generated frames only
                frozen = self._frozen(real, fake, maps, u[1], tape, with_real=not self.separate_passes)
            loss = self._g_loss(real, fake, u[1], maps, frozen)
        return self._apply_g(tape, loss)

    def _g_loss(
        self, real: tf.Tensor, fake: tf.Tensor, u: tf.Tensor, maps: tf.Tensor | None = None,
        frozen: _Frozen | None = None,
    ) -> tf.Tensor:
        """G's loss on D's logits of `fake`, with D's batch [real; fake] as in D's update.

        `frozen`: a frozen backbone's features of [real; fake] from this step's one pass.
        """
        local = tf.shape(real)[0]
        if frozen is None:
            logits = self._discriminate(real, fake, u, maps, part="fake")
        elif frozen.real is None:
            logits = self._head(frozen.fake, frozen.maps)
        else:
            logits = self._judge_features(frozen.features(fake_gradient=True), frozen.maps, local, "fake")
        return generator_loss(logits, self.global_batch_size, self.loss)

    def _apply_g(self, tape: tf.GradientTape, loss: tf.Tensor) -> dict[str, tf.Tensor]:
        scaled = self._scale(self.g_optimizer, loss)
        grads = self._tape(tape).gradient(scaled, self.generator.trainable_variables)
        grads = self._unscale(self.g_optimizer, grads)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_variables, strict=True))
        return {"g_loss": loss}

    def _both(self, batch: Any, z: tf.Tensor, u: tf.Tensor) -> dict[str, tf.Tensor]:
        """D's update, then G's through the updated D, on one generated batch.

        G has not changed between the two updates, so one forward pass of G serves both (the
        alternating updates of the paper with one noise batch per step, as in the DCGAN
        tutorial). With a frozen backbone the backbone's features of real and generated frames
        are also unchanged by D's update (only the head learns): the backbone runs once per
        frame and step, and G's gradient flows back through the activations kept from then
        (augmented once, for both updates).
        """
        real, maps = self._unpack(batch)
        local = tf.shape(real)[0]
        z, u = self._my_latents(z, local), self._my_uniforms(u, local)
        with tf.GradientTape() as tape:
            fake = self._generate(z, maps)
            frozen = None
            if self._split is not None:
                # two passes: in one over [real; fake], G's backward would run over both halves
                frozen = self._frozen(real, fake, maps, u[0], tape)
            with tape.stop_recording():
                out = self._d_update_on(real, fake, u[0], maps, frozen)
            loss = self._g_loss(real, fake, u[1], maps, frozen)
        out.update(self._apply_g(tape, loss))
        return out

    @staticmethod
    def _scale(opt: tf.keras.optimizers.Optimizer, loss: tf.Tensor) -> tf.Tensor:
        return opt.get_scaled_loss(loss) if hasattr(opt, "get_scaled_loss") else loss

    @staticmethod
    def _unscale(opt: tf.keras.optimizers.Optimizer, grads: list) -> list:
        return opt.get_unscaled_gradients(grads) if hasattr(opt, "get_unscaled_gradients") else grads

    # --- across replicas -------------------------------------------------------------------------
    def _distributed(self, fn, stream: int):  # noqa: ANN001, ANN202 - a tf.function body
        def run(real, step):  # noqa: ANN001, ANN202
            # Drawn outside the replicas' (possibly XLA-compiled) functions: XLA's stateless
            # generators give other numbers than TF's for the same seed.
            z = latent_batch(self.seed, step, stream, self.global_batch_size, self.latent_dim)
            u = augment_uniforms(self.seed, step, stream, self.global_batch_size, bool(self.augment))
            per_replica = self.strategy.run(fn, args=(real, z, u))
            out = {
                k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()
            }
            if self.hvd is not None:  # each rank holds its share of the global sums
                keys = sorted(out)
                summed = self.hvd.allreduce(tf.stack([out[k] for k in keys]), op=self.hvd.Sum)
                out = {k: summed[i] for i, k in enumerate(keys)}
            return out

        return run

    def _train_step(self, real: tf.Tensor, step: tf.Tensor) -> dict[str, tf.Tensor]:
        if self.fresh_draws:  # D's update, then G's with its own draws (stream 1), through the updated D
            out = self._distributed(self._d_update, 0)(real, step)
            out.update(self._distributed(self._g_update, 1)(real, step))
            return out
        return self._distributed(self._replica_step, 0)(real, step)

    def _agree(self, flag: tf.Tensor) -> tf.Tensor:
        """The largest `flag` of all workers (a SIGTERM seen by any; the newest step any resumed from)."""
        flag = tf.reshape(tf.cast(flag, tf.float32), [1])
        per_replica = self.strategy.run(lambda: tf.identity(flag))
        total = tf.reduce_max(self.strategy.gather(per_replica, axis=0))  # ReduceOp has no MAX
        if self.hvd is not None:
            total = self.hvd.allreduce(total, op=self.hvd.Max)
        return total
