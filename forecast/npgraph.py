"""Numpy twins of the serving graph: the worker's per-batch inference without a TensorFlow call.

A TensorFlow call costs a few hundred microseconds whatever the batch (dispatch, conversion,
the graph's executor); the models served here are small (a window of tens of values, one
recurrent layer of tens of units), so on the worker's batches of tens of windows that fixed
cost is most of a batch's time. `compile_model` walks a loaded Keras functional model once
and returns a plain numpy function with the same outputs, built from the twins below (one
per layer class the trainer uses). A model with any other layer gets `Unsupported`, and
`forecast.modelio` keeps the TensorFlow call for it; it also compares both on test windows
when a model loads and keeps TensorFlow when they disagree.

Everything is computed in float32, as the Keras model does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from forecast import layers as fl

Array = np.ndarray
Twin = Callable[..., Any]
F32 = np.float32
BANK_COPY_BYTES = 4 << 20  # an expert bank copies its sliding windows this much at a time


class Unsupported(Exception):
    """The model holds a layer (or a layer setting) without a numpy twin."""


def _relu(x: Array) -> Array:
    return np.maximum(x, F32(0))


def _sigmoid(x: Array) -> Array:
    with np.errstate(over="ignore"):
        return (F32(1) / (F32(1) + np.exp(-x))).astype(F32)


def _linear(x: Array) -> Array:
    return x


_ACTIVATIONS: dict[Any, Callable[[Array], Array]] = {
    keras.activations.relu: _relu, keras.activations.tanh: np.tanh,
    keras.activations.sigmoid: _sigmoid, keras.activations.linear: _linear,
}


def _activation(fn: Any) -> Callable[[Array], Array]:
    if fn not in _ACTIVATIONS:
        raise Unsupported(f"activation {getattr(fn, '__name__', fn)!r}")
    return _ACTIVATIONS[fn]


def _matmul(x: Array, w: Array) -> Array:
    """x (..., d) @ w (d, k) as one 2-D product (a 3-D `@` makes one BLAS call per row)."""
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[1])


def _np(variable: Any) -> Array:
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=F32)


# --- Keras layers -------------------------------------------------------------------------


def _dense(layer: Any) -> Twin:
    kernel = _np(layer.kernel)
    bias = _np(layer.bias) if layer.use_bias else F32(0)
    act = _activation(layer.activation)
    return lambda x: act(_matmul(x, kernel) + bias)


def _check_recurrent(layer: Any) -> None:
    if layer.return_sequences or layer.return_state or layer.go_backwards or layer.stateful:
        raise Unsupported(f"{type(layer).__name__} with sequences, state or backwards")


def _simple_rnn(layer: Any) -> Twin:
    _check_recurrent(layer)
    cell = layer.cell
    kernel, rec = _np(cell.kernel), _np(cell.recurrent_kernel)
    bias = _np(cell.bias) if cell.use_bias else F32(0)
    act = _activation(cell.activation)

    def run(x: Array) -> Array:
        inputs = _matmul(x, kernel) + bias  # (b, n, units): every step's input term at once
        h = act(inputs[:, 0])
        for t in range(1, x.shape[1]):
            h = act(inputs[:, t] + h @ rec)
        return h
    return run


def _lstm(layer: Any) -> Twin:
    _check_recurrent(layer)
    cell = layer.cell
    kernel, rec = _np(cell.kernel), _np(cell.recurrent_kernel)
    bias = _np(cell.bias) if cell.use_bias else F32(0)
    act, gate = _activation(cell.activation), _activation(cell.recurrent_activation)

    def run(x: Array) -> Array:
        u = rec.shape[0]
        h = np.zeros((len(x), u), dtype=F32)
        c = np.zeros_like(h)
        for t in range(x.shape[1]):
            z = x[:, t] @ kernel + h @ rec + bias  # 2-D products
            i, f, g, o = gate(z[:, :u]), gate(z[:, u:2 * u]), z[:, 2 * u:3 * u], gate(z[:, 3 * u:])
            c = f * c + i * act(g)
            h = o * act(c)
        return h
    return run


def _gru(layer: Any) -> Twin:
    _check_recurrent(layer)
    cell = layer.cell
    if not cell.reset_after or not cell.use_bias:
        raise Unsupported("GRU without reset_after and bias")
    kernel, rec, bias = _np(cell.kernel), _np(cell.recurrent_kernel), _np(cell.bias)
    act, gate = _activation(cell.activation), _activation(cell.recurrent_activation)

    def run(x: Array) -> Array:
        u = rec.shape[0]
        h = np.zeros((len(x), u), dtype=F32)
        for t in range(x.shape[1]):
            mx = x[:, t] @ kernel + bias[0]
            mh = h @ rec + bias[1]
            z = gate(mx[:, :u] + mh[:, :u])
            r = gate(mx[:, u:2 * u] + mh[:, u:2 * u])
            hh = act(mx[:, 2 * u:] + r * mh[:, 2 * u:])
            h = z * h + (F32(1) - z) * hh
        return h
    return run


def _cropping(layer: Any) -> Twin:
    a, b = (int(v) for v in layer.cropping)
    return lambda x: x[:, a: x.shape[1] - b]


def _average(layer: Any) -> Twin:
    def run(xs: list[Array]) -> Array:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return (out / F32(len(xs))).astype(F32)
    return run


def _concatenate(layer: Any) -> Twin:
    axis = int(layer.axis)
    return lambda xs: np.concatenate(xs, axis=axis)


# --- the project's layers (forecast.layers) -----------------------------------------------


def _window_scale(layer: fl.WindowScale) -> Twin:
    mode = layer.mode

    def run(x: Array) -> list[Array]:
        if mode == "none":
            return [x, np.zeros_like(x[:, 0, :]), np.ones_like(x[:, 0, :])]
        n = x.shape[1]
        loc = x[:, -1, :]
        # sum * (1/n) rather than np.mean: the same float32 result, without mean's overhead
        if mode == "diff" and n >= 2:
            mad = np.abs(x[:, 1:, :] - x[:, :-1, :]).sum(axis=1) / F32(n - 1)
        else:
            mad = np.abs(x - (x.sum(axis=1, keepdims=True) / F32(n))).sum(axis=1) / F32(n)
        scale = mad + F32(fl.EPS) * (np.abs(x).sum(axis=1) / F32(n)) + F32(fl.TINY)
        return [(x - loc[:, None]) / scale[:, None], loc, scale]
    return run


def _unscale(layer: fl.Unscale) -> Twin:
    return lambda ins: ins[0] * ins[2] + ins[1]


def _conformal(layer: fl.ConformalInterval) -> Twin:
    q = np.asarray(layer.q, dtype=F32)

    def run(ins: list[Array]) -> Array:
        mean, scale = ins
        half = q * scale
        return np.concatenate([mean, mean - half, mean + half], axis=-1)
    return run


def _expert_bank(layer: fl.ExpertBank) -> Twin:
    kernel = layer._kernel[:, 0, :].astype(F32)  # (filter_len, experts * horizon)
    L, H, names = layer.filter_len, layer.horizon, len(layer.names)

    def bank(z: Array) -> Array:
        positions = z.shape[1] - L + 1
        out = np.empty((len(z), positions, kernel.shape[1]), dtype=np.result_type(z, kernel))
        # the windows are copied for the product: a few MiB at a time stay in the cache
        # (one copy of a whole batch of long windows is GiBs, and 20x slower)
        step = max(1, BANK_COPY_BYTES // (positions * L * z.itemsize))
        for s in range(0, len(z), step):
            w = sliding_window_view(z[s: s + step, :, 0], L, axis=1)  # (b, positions, L)
            out[s: s + step] = _matmul(w, kernel)
        return out.reshape(len(z), positions, names, H)

    def errors(f: Array, z: Array) -> Array:
        n = z.shape[1]
        errs = []
        for h in range(1, H + 1):
            m = n - L - h + 1
            target = z[:, L + h - 1:, :]
            errs.append(np.mean(np.abs(f[:, :m, :, h - 1] - target), axis=1))
        return np.stack(errs, axis=-1)

    def run(ins: list[Array]) -> list[Array]:
        x, z, loc, scale = ins
        f = bank(z)
        forecasts, errs = [f[:, -1]], [errors(f, z)]
        if layer.log:
            with np.errstate(all="ignore"):
                positive = np.min(x[:, :, 0], axis=1, keepdims=True) > 0
                safe = np.where(positive[:, :, None], x, F32(1))
                last = safe[:, -1:, :]
                g = np.clip(bank(np.log(safe / last)), -fl.LOG_CLIP, fl.LOG_CLIP).astype(F32)
                gz = ((last[:, 0, :].reshape(-1, 1, 1, 1) * np.exp(g) - loc.reshape(-1, 1, 1, 1))
                      / scale.reshape(-1, 1, 1, 1))
            gz = np.where(positive.reshape(-1, 1, 1, 1), gz, f)
            forecasts.append(gz[:, -1])
            errs.append(errors(gz, z))
        return [np.concatenate(forecasts, axis=1), np.concatenate(errs, axis=1)]
    return run


def _gated_combine(layer: fl.GatedCombine) -> Twin:
    prior, gate_w = _np(layer.prior), _np(layer.gate)
    corr, corr_bias = _np(layer.corr), _np(layer.corr_bias)
    sharp = np.logaddexp(F32(0), _np(layer.sharp)).astype(F32)  # softplus
    k, h = prior.shape

    def run(ins: list[Array]) -> list[Array]:
        f, e, feat = ins
        logits = prior - sharp * e + (feat @ gate_w).reshape(-1, k, h)
        logits = logits - np.max(logits, axis=1, keepdims=True)
        w = np.exp(logits)
        w = w / np.sum(w, axis=1, keepdims=True)
        spread = np.sum(w * e, axis=1)
        point = np.sum(w * f, axis=1) + spread * (feat @ corr + corr_bias)
        return [point, spread]
    return run


def _hybrid_output(layer: fl.HybridOutput) -> Twin:
    q = None if layer.q is None else np.asarray(layer.q, dtype=F32)
    low, offset = F32(layer.min_spread), F32(layer.offset)

    def run(ins: list[Array]) -> Array:
        point, spread, loc, scale = ins
        mean = point * scale + loc
        if q is None:
            return mean
        half = q * (np.maximum(spread, low) + offset) * scale
        return np.concatenate([mean, mean - half, mean + half], axis=-1)
    return run


def _soft_clip(layer: fl.SoftClip) -> Twin:
    limit = F32(layer.limit)
    return lambda x: limit * np.tanh(x / limit)


def _fill_missing(layer: fl.FillMissing) -> Twin:
    def run(x: Array) -> list[Array]:
        known = ~np.isnan(x)
        return [np.where(known, x, F32(0)), known.sum(axis=1, dtype=F32)]
    return run


def _naive_expert(layer: fl.NaiveExpert) -> Twin:
    def run(z: Array) -> list[Array]:
        point = np.zeros((len(z), layer.horizon), dtype=F32)
        return [point, point + F32(1)]
    return run


def _select_by_count(layer: fl.SelectByCount) -> Twin:
    lengths = [F32(v) for v in layer.lengths]

    def run(ins: list[Array]) -> Array:
        count, outs = ins[0], ins[1:]
        chosen = outs[0]
        for length, out in zip(lengths[1:], outs[1:], strict=True):
            chosen = np.where(count >= length, out, chosen)
        return chosen
    return run


TWINS: dict[type, Callable[[Any], Twin]] = {
    keras.layers.Dense: _dense, keras.layers.SimpleRNN: _simple_rnn, keras.layers.LSTM: _lstm,
    keras.layers.GRU: _gru, keras.layers.Cropping1D: _cropping,
    keras.layers.Average: _average, keras.layers.Concatenate: _concatenate,
    fl.WindowScale: _window_scale, fl.Unscale: _unscale, fl.ConformalInterval: _conformal,
    fl.ExpertBank: _expert_bank, fl.GatedCombine: _gated_combine,
    fl.HybridOutput: _hybrid_output, fl.SoftClip: _soft_clip, fl.FillMissing: _fill_missing,
    fl.NaiveExpert: _naive_expert, fl.SelectByCount: _select_by_count,
}


# --- the graph ----------------------------------------------------------------------------


def twin(op: Any) -> Twin:
    """The numpy function of one layer (or nested model) as its weights are now."""
    if isinstance(op, keras.Model):
        return compile_model(op)
    factory = TWINS.get(type(op))
    if factory is None:
        raise Unsupported(f"layer {type(op).__name__}")
    return factory(op)


def _reader(arguments: Any) -> Callable[[dict[int, Any]], Any]:
    """How a node reads its input from the computed tensors: one tensor, or a list of them."""
    args, kwargs = arguments.args, arguments.kwargs
    if any(v is not None and not isinstance(v, bool) for v in kwargs.values()) or len(args) != 1:
        raise Unsupported("a layer called with more than one input argument")
    arg = args[0]
    if isinstance(arg, list | tuple):
        ids = [id(t) for t in arg]
        return lambda env: [env[i] for i in ids]
    key = id(arg)
    return lambda env: env[key]


def compile_model(model: Any) -> Callable[[Array], Any]:
    """The numpy function of a Keras functional model with one input; raises Unsupported."""
    if not hasattr(model, "_nodes_by_depth") or len(model.inputs) != 1:
        raise Unsupported(f"model {type(model).__name__} is not a one-input functional model")
    steps = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            steps.append((twin(node.operation), _reader(node.arguments),
                          [id(t) for t in node.outputs]))
    source = id(model.inputs[0])
    targets = [id(t) for t in model.outputs]

    def run(x: Array) -> Any:
        env: dict[int, Any] = {source: x}
        for fn, read, outs in steps:
            result = fn(read(env))
            env.update(zip(outs, result if isinstance(result, list) else [result], strict=True))
        if len(targets) == 1:
            return env[targets[0]]
        return [env[t] for t in targets]
    return run


def predict(model: Any, x: Array, chunk: int = 4096) -> list[Array]:
    """`model`'s outputs (a list, one array per output) on windows `x` (m, n, 1) through its
    numpy twin, `chunk` windows at a time (bounds the memory of an expert bank's backtests)."""
    run = compile_model(model)
    parts = []
    for i in range(0, len(x), chunk):
        out = run(x[i:i + chunk])
        parts.append(out if isinstance(out, list) else [out])
    return [np.concatenate(p) for p in zip(*parts, strict=True)]
