"""FLOPs of one adversarial step, counted analytically from the layers (for MFU and the benchmark).

Only the multiply-adds of convolutions and dense layers count (2 FLOPs each), as MFU figures
usually do; normalisation, activations and resizing are memory traffic, not FLOPs worth a
tensor core. Backward costs are the forward cost of each layer once for the gradient of its
input (where something before it needs one) and once for the gradient of its weights (where
they train). DESIGN §3: at 256 px this count equals tf.profiler's for the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class LayerFlops:
    name: str
    flops: float  # forward, per example
    trainable: bool


def _shape(s):  # noqa: ANN001, ANN202 - keras shapes: tuple or list of tuples
    return s[0] if isinstance(s, list) else s


def layer_flops(layer: tf.keras.layers.Layer, called: tf.keras.layers.Layer | None = None) -> float:
    """Forward FLOPs per example of one leaf layer (0 for layers without multiply-adds); `called`: the
    wrapper that was called in its place (spectral normalisation), whose shapes are the layer's."""
    layers = tf.keras.layers
    if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D, layers.Dense)):
        out = _shape((called or layer).output_shape)
        inp = _shape((called or layer).input_shape)
    else:
        return 0.0
    if isinstance(layer, layers.Dense):
        return 2.0 * float(inp[-1]) * layer.units
    kh, kw = layer.kernel_size
    cin = float(inp[-1])
    if isinstance(layer, layers.Conv2DTranspose):  # every input pixel scatters a kh x kw x cout patch
        return 2.0 * inp[1] * inp[2] * kh * kw * cin * layer.filters
    if isinstance(layer, layers.DepthwiseConv2D):
        return 2.0 * out[1] * out[2] * kh * kw * cin * layer.depth_multiplier
    if isinstance(layer, layers.SeparableConv2D):
        mult = layer.depth_multiplier
        return 2.0 * out[1] * out[2] * (kh * kw * cin * mult + cin * mult * layer.filters)
    return 2.0 * out[1] * out[2] * kh * kw * (cin / layer.groups) * layer.filters


def model_flops(model: tf.keras.Model) -> list[LayerFlops]:
    """Per-layer forward FLOPs, in graph order, nested models (backbones) flattened."""
    rows = []
    every = list(model._flatten_layers(include_self=False, recursive=True))
    wrappers = {id(w.layer): w for w in every if isinstance(w, tf.keras.layers.Wrapper)}
    for layer in every:
        if isinstance(layer, tf.keras.Model):
            continue
        f = layer_flops(layer, wrappers.get(id(layer)))
        if f:
            rows.append(LayerFlops(layer.name, f, bool(layer.trainable_weights)))
    return rows


def _backward(rows: list[LayerFlops], weights: bool, to_input: bool) -> float:
    """FLOPs per example of one backward pass through `rows`.

    `weights`: gradients of trainable weights are taken; `to_input`: the gradient must reach the
    model's input (G's step through D), else only layers after the first trainable one pass it on.
    """
    total, seen_trainable = 0.0, to_input
    for i, r in enumerate(rows):
        if weights and r.trainable:
            total += r.flops
        if seen_trainable and (i > 0 or to_input):
            total += r.flops  # input gradient
        seen_trainable = seen_trainable or (weights and r.trainable)
    return total


def step_flops(generator: tf.keras.Model, discriminator: tf.keras.Model, batch: int,
               fused: bool = True) -> dict[str, float]:
    """FLOPs of one D update then one G update on a global batch of `batch` real frames.

    `fused`: this project's step (medsynth.train.step): one G forward pass serves both updates,
    and a frozen feature network's one pass over [real; fake] too, so G's update adds the learning
    head's second pass over [real; fake] and backward passes; a learning backbone sees the real
    frames once more (forward only) for the head's batch. Otherwise the reference: two independent
    updates, each with its own forward passes.
    """
    g, d = model_flops(generator), model_flops(discriminator)
    g_fwd = sum(r.flops for r in g)
    d_fwd = sum(r.flops for r in d)
    first = next((i for i, r in enumerate(d) if r.trainable), len(d))
    frozen_fwd = sum(r.flops for r in d[:first])  # the frozen prefix: backbone (and fixed projections)
    frozen = frozen_fwd > 0 and all(r.trainable for r in d[first:])  # a frozen network under a learning head
    d_step = batch * g_fwd + 2 * batch * d_fwd + 2 * batch * _backward(d, weights=True, to_input=False)
    d_to_input = _backward(d, weights=False, to_input=True)
    backward = batch * (d_to_input + _backward(g, weights=True, to_input=False))
    if not fused:
        forward = batch * g_fwd + batch * d_fwd
    elif frozen:
        forward = 2 * batch * (d_fwd - frozen_fwd)
    else:
        forward = 2 * batch * d_fwd
    g_step = forward + backward
    return {
        "g_forward_per_image": g_fwd,
        "d_forward_per_image": d_fwd,
        "d_frozen_forward_per_image": frozen_fwd,
        "d_step": d_step,
        "g_step": g_step,
        "step": d_step + g_step,
        "frozen_backbone": float(frozen),
    }


def profiler_forward_flops(model: tf.keras.Model, batch: int = 1) -> float:
    """TF's registered FLOPs of the conv/matmul ops of one forward pass, per example (a cross-check)."""
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec([batch, *model.input_shape[1:]], tf.float32)
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    graph = convert_variables_to_constants_v2(fn).graph
    kinds = ("Conv2D", "Conv2DBackpropInput", "MatMul", "DepthwiseConv2dNative")
    return float(sum(
        tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value or 0
        for op in graph.get_operations() if op.type in kinds
    )) / batch
