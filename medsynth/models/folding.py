"""A frozen network with its batch norm folded into the convolutions before it.

A frozen batch norm (`trainable=False`: Keras runs it in inference mode) is an affine map per channel,
y = γ·(x − μ)/√(σ² + ε) + β, so after a bias-free convolution it is the same convolution with its
kernel scaled per output channel by s = γ/√(σ² + ε) and a bias β − μ·s: exact up to rounding. The
folded network runs one convolution, a bias-add and its activation where the original runs four ops
(and in G's backward pass, no FusedBatchNormGrad), and TF's graph optimiser fuses convolution, bias
and ReLU6 into one oneDNN kernel, forward and, for G's gradient, backward.

`fold_batch_norm` returns a new Keras model with its own (non-trainable) variables, built from the
frozen model's current weights: build it after a checkpoint is restored. The original is untouched,
so checkpoints, exports and anything that reads the original's layers keep working. The copy's
convolutions are Keras' own (the project's forward-gradient classes are not kept: the caller
chooses those per CPU).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

CONVOLUTIONS = (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D)
# kernels laid out otherwise: not folded
OTHER_LAYOUTS = (tf.keras.layers.Conv2DTranspose, tf.keras.layers.SeparableConv2D)


def _folded_pairs(model: tf.keras.Model) -> dict[str, str]:
    """{convolution: batch norm} of `model`'s layers where a frozen BN is the one consumer of a
    convolution without activation, and the convolution its one input."""
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, CONVOLUTIONS) or isinstance(layer, OTHER_LAYOUTS):
            continue
        if layer.activation is not tf.keras.activations.linear or len(layer.inbound_nodes) != 1:
            continue
        consumers = layer.outbound_nodes
        if len(consumers) != 1:
            continue
        bn = consumers[0].layer
        if (isinstance(bn, tf.keras.layers.BatchNormalization) and not bn.trainable
                and len(bn.inbound_nodes) == 1 and bn.axis in ([3], [-1]) and bn.center and bn.scale):
            pairs[layer.name] = bn.name
    return pairs


def _folded_weights(conv: tf.keras.layers.Layer, bn: tf.keras.layers.BatchNormalization) -> list[np.ndarray]:
    gamma, beta, mean, var = (w.numpy().astype(np.float64) for w in bn.weights)
    scale = gamma / np.sqrt(var + bn.epsilon)
    kernel = conv.weights[0].numpy().astype(np.float64)  # kernel or depthwise_kernel
    bias = conv.bias.numpy().astype(np.float64) if conv.use_bias else np.zeros_like(mean)
    if isinstance(conv, tf.keras.layers.DepthwiseConv2D):  # [k, k, in, multiplier]: output in·m + j
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    return [kernel.astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)]


def fold_batch_norm(model: tf.keras.Model) -> tuple[tf.keras.Model, int]:
    """A copy of the frozen functional `model` (nested models included) with every convolution →
    frozen BN pair folded into one convolution with a bias; returns it and how many pairs it folded."""
    folded = 0

    def clone(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        nonlocal folded
        if isinstance(layer, tf.keras.Model):
            inner, n = fold_batch_norm(layer)
            folded += n
            return inner
        config = layer.get_config()
        if layer.name in folded_norms:
            return tf.keras.layers.Activation("linear", name=layer.name)
        if layer.name in pairs:
            folded += 1
            config["use_bias"] = True
        base = next((c for c in CONVOLUTIONS if type(layer) is not c and isinstance(layer, c)), None)
        if base is not None and not isinstance(layer, OTHER_LAYOUTS):
            return base.from_config(config)  # the project's forward-gradient convolutions: Keras' own
        return layer.__class__.from_config(config)

    pairs = _folded_pairs(model)
    folded_norms = set(pairs.values())
    copy = tf.keras.models.clone_model(model, clone_function=clone)
    by_name = {layer.name: layer for layer in model.layers}
    for new in copy.layers:
        old = by_name[new.name]
        if isinstance(old, tf.keras.Model) or new.name in folded_norms:
            continue  # a nested model was copied with its weights; a folded BN has none left
        if new.name in pairs:
            new.set_weights(_folded_weights(old, by_name[pairs[new.name]]))
        else:
            new.set_weights(old.get_weights())
    copy.trainable = False
    return copy, folded
