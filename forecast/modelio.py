"""Loading and checking model artifacts: what the worker trusts before it serves a version.

`load_bytes` checks, in order: the sha256 of the bytes against the manifest, the HMAC when a
key is configured, that Keras loads the bytes in safe mode (no Lambda layers, no pickle), the
input shape (None, n_steps, 1), the output width, and that a probe window gives finite output.
Any failure raises `ModelRejected` with a one-line reason.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import logging
import os
import sys
import tempfile
import time
import zipfile
from typing import Any

import numpy as np

from forecast import bundle, registry, season, smoothing
from forecast.errors import ModelRejected

log = logging.getLogger(__name__)

OUTPUTS = ("point", "interval")
ALL_ROWS = sys.maxsize  # `numpy_rows` of a model numpy serves alone
SIZES = (40, 256, 2048)  # batch sizes numpy is timed against TensorFlow at, when a model loads


def sign(blob: bytes, key: str) -> str:
    """Hex HMAC-SHA256 of the artifact bytes.

    >>> sign(b"model", "k")[:16]
    'cf7b6833e658d95c'
    """
    return hmac.new(key.encode(), blob, hashlib.sha256).hexdigest()


class LoadedModel:
    """A checked model: `predict` maps raw windows (m, n_steps) to raw forecasts."""

    def __init__(self, version: str, manifest: dict[str, Any], model: Any,
                 numpy: bool = True) -> None:
        import tensorflow as tf

        self.version = version
        self.manifest = manifest
        self.model = model
        self.n_steps = int(manifest["n_steps"])
        self.horizon = int(manifest["horizon"])
        self.has_interval = manifest.get("outputs") == "interval"
        self.width = self.horizon * (3 if self.has_interval else 1)
        self._spec = tf.TensorSpec([None, self.n_steps, 1], tf.float32)
        self._traced: Any = None  # the TF function, traced when TF serves some batches
        self._call: Any = None
        self._constant = tf.constant
        # Plain numpy when every layer has a twin, it agrees and it is faster (forecast.npgraph):
        # a TF call costs ~0.2-0.7 ms whatever the batch, most of a small model's batch time.
        # A warm-up part (`partial`) is served by numpy alone wherever its twin agrees: it
        # serves young series, a few at a time, and tracing it for TF costs seconds a load.
        partial = bool(manifest.get("partial"))
        self._numpy: Any = None
        self.numpy_rows = 0
        if numpy or partial:
            self._numpy, self.numpy_rows = _numpy_twin(
                model, self.n_steps, partial, self._eager, self._tf_predict)
        if self.numpy_rows < ALL_ROWS and self._call is None:
            self._trace()  # now, not in the middle of a batch
        rows = "" if self.numpy_rows == ALL_ROWS else f" up to {self.numpy_rows} windows"
        self.engine = f"numpy{rows}" if self.numpy_rows else "tensorflow"

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """(m, n_steps) raw float32 windows -> (m, horizon), or (m, 3*horizon) with intervals."""
        x = np.asarray(windows, dtype=np.float32)
        if x.size == 0:
            return np.zeros((0, self.width), dtype=np.float32)
        if x.ndim not in (2, 3) or x.shape[1] != self.n_steps or x.size != len(x) * self.n_steps:
            raise ValueError(f"expected windows of shape (m, {self.n_steps}), got {x.shape}")
        x = x.reshape(len(x), self.n_steps, 1)
        if len(x) <= self.numpy_rows:
            out: np.ndarray = self._numpy(x)
            return out
        return self._tf_predict(x)

    def _trace(self) -> None:
        import tensorflow as tf

        # One trace for every batch size: the worker calls this per batch, never model.predict.
        # A partial (no __code__) keeps TF from counting every loaded model as a retrace.
        self._traced = tf.function(functools.partial(self.model, training=False),
                                   input_signature=[self._spec])
        # The concrete function skips tf.function's per-call dispatch (~0.2 ms a call).
        self._call = self._traced.get_concrete_function()

    def _tf_predict(self, x: np.ndarray) -> np.ndarray:
        if self._call is None:
            self._trace()
        out: np.ndarray = self._call(self._constant(x)).numpy()
        return out

    def _eager(self, x: np.ndarray) -> np.ndarray:
        """The Keras model called directly: no trace (for a few windows, once)."""
        return np.asarray(self.model(x, training=False))

    def __repr__(self) -> str:
        return (f"LoadedModel({self.version!r}, n_steps={self.n_steps}, horizon={self.horizon}, "
                f"interval={self.has_interval})")


def probe_windows(n_steps: int, partial: bool, rows: int = 64) -> np.ndarray:
    """(rows, n_steps, 1) float32 windows of many shapes and scales, to compare two engines:
    random walks from 1e-3 to 1e5, constant, alternating, with zeros and negative values;
    with `partial`, a random unknown past (NaN) of 0..n_steps-1 values."""
    rng = np.random.default_rng(11)
    level = 10.0 ** rng.uniform(-3, 5, (rows, 1))
    x = level * (1 + np.cumsum(rng.normal(0, 0.05, (rows, n_steps)), axis=1))
    x[0], x[1], x[2] = 5.0, 0.0, np.where(np.arange(n_steps) % 2, 3.0, -1.0)
    x[3] = rng.normal(0, 1, n_steps)
    if partial:
        for i in range(rows):
            x[i, : rng.integers(0, n_steps)] = np.nan
    return x.astype(np.float32).reshape(rows, n_steps, 1)


def _numpy_twin(model: Any, n_steps: int, partial: bool, reference: Any, timed: Any
                ) -> tuple[Any, int]:
    """The model's numpy function and the batch size up to which it serves (`_numpy_rows`
    against the TF function `timed`; every batch for a warm-up part), or (None, 0) where a
    layer has no twin or it disagrees with `reference`."""
    from forecast import npgraph

    try:
        fn = npgraph.compile_model(model)
    except npgraph.Unsupported as exc:
        log.info("model served by TensorFlow: %s has no numpy twin", exc)
        return None, 0
    x = probe_windows(n_steps, partial)
    want = reference(x)
    with np.errstate(all="ignore"):
        got = np.asarray(fn(x))
        bound = 1e-3 * (1.0 + np.abs(want)) + 1e-4 * np.nanmax(np.abs(x), axis=(1, 2))[:, None]
        close = (np.abs(got - want) <= bound) | (np.isnan(got) & np.isnan(want))
    if got.shape != want.shape or got.dtype != np.float32 or not close.all():
        log.warning("model served by TensorFlow: its numpy twin differs on test windows")
        return None, 0
    return fn, ALL_ROWS if partial else _numpy_rows(fn, timed, n_steps)


def _numpy_rows(fn: Any, reference: Any, n_steps: int) -> int:
    """The largest batch (of SIZES) up to which numpy was faster; 0: TensorFlow always.

    TensorFlow spreads a large batch over every core; numpy (one BLAS thread in the worker)
    wins on the small batches a worker sees at moderate rates."""
    rows = 0
    for size in SIZES:
        x = np.tile(probe_windows(n_steps, False, 40), (size // 40 + 1, 1, 1))[:size]
        if _seconds(fn, x) > _seconds(reference, x):
            break
        rows = size
    return rows


def _seconds(fn: Any, x: np.ndarray, calls: int = 5) -> float:
    """The fastest of a few calls (the first one warms up)."""
    fn(x)
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - start)
    return best


def _check_manifest(manifest: dict[str, Any]) -> None:
    for name in ("n_steps", "horizon"):
        value = manifest.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelRejected(f"manifest {name} must be a positive integer, got {value!r}")
    if manifest.get("outputs", "point") not in OUTPUTS:
        raise ModelRejected(f"manifest outputs must be one of {OUTPUTS}, "
                            f"got {manifest['outputs']!r}")


def _load_keras(blob: bytes) -> Any:
    import keras

    import forecast.layers  # noqa: F401  (registers the custom layers before deserialising)

    if not zipfile.is_zipfile(io.BytesIO(blob)):
        raise ModelRejected("Keras refused the artifact: not a .keras archive (not a zip file)")
    fd, name = tempfile.mkstemp(suffix=".keras")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        return keras.saving.load_model(name, compile=False, safe_mode=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ModelRejected(f"Keras refused the artifact: {type(exc).__name__}: {reason}") from None
    finally:
        os.unlink(name)


def load_bytes(blob: bytes, manifest: dict[str, Any], hmac_key: str = "", numpy: bool = True
               ) -> LoadedModel | BundleModel:
    """Check and load an artifact (a `.keras` file or a bundle); raises ModelRejected.

    `numpy=False` skips the numpy engine of full parts (its check and timing at load):
    TensorFlow serves their every batch, as it would the large ones anyway (the trainer's
    holdout forecasts). Warm-up parts are served by numpy either way."""
    _check_manifest(manifest)
    registry.verify_sha256(blob, manifest)
    if hmac_key:
        signature = manifest.get("hmac")
        if not isinstance(signature, str) or not signature:
            raise ModelRejected("unsigned model: an HMAC key is set but the manifest has no hmac")
        if not hmac.compare_digest(sign(blob, hmac_key), signature):
            raise ModelRejected("bad HMAC signature")
    if bundle.is_bundle(blob):
        return _load_bundle(blob, manifest, numpy)
    return _load_part(blob, manifest, numpy=numpy)


def _load_part(blob: bytes, manifest: dict[str, Any], what: str = "model", numpy: bool = True
               ) -> LoadedModel:
    """One `.keras` artifact, checked against the manifest's n_steps, horizon and outputs."""
    model = _load_keras(blob)
    n_steps, horizon = manifest["n_steps"], manifest["horizon"]
    if len(model.inputs) != 1:
        raise ModelRejected(f"{what} has {len(model.inputs)} inputs, expected 1")
    shape = tuple(model.inputs[0].shape)
    if shape != (None, n_steps, 1):
        raise ModelRejected(f"{what}: input shape {shape} does not match (None, {n_steps}, 1)")
    loaded = LoadedModel(str(manifest.get("version", "local")), manifest, model, numpy)
    out_shape = tuple(model.outputs[0].shape) if len(model.outputs) == 1 else None
    if out_shape is None or len(out_shape) != 2 or out_shape[1] != loaded.width:
        raise ModelRejected(f"{what}: output shape {out_shape} does not match (None, "
                            f"{loaded.width}) for horizon={horizon}, "
                            f"outputs={manifest.get('outputs', 'point')}")
    probe = np.stack([np.linspace(1.0, 2.0, n_steps), np.linspace(-50.0, 100.0, n_steps)])
    if manifest.get("partial"):  # a warm-up part: its windows have an unknown past (NaN)
        probe[:, : n_steps - min(n_steps, 2)] = np.nan
    _probe(loaded, probe.astype(np.float32), what)
    return loaded


def _probe(model: LoadedModel | BundleModel, probe: np.ndarray, what: str) -> None:
    try:
        out = model.predict(probe)
    except Exception as exc:
        raise ModelRejected(f"{what}: probe prediction failed: {type(exc).__name__}: {exc}"
                            ) from None
    if out.shape != (len(probe), model.width):
        raise ModelRejected(f"{what}: probe output shape {out.shape}, expected "
                            f"({len(probe)}, {model.width})")
    if not np.all(np.isfinite(out)):
        raise ModelRejected(f"{what}: probe window gave a non-finite output (NaN or inf)")


class BundleModel:
    """A checked bundle (`forecast.bundle`): one full and one warm-up model per family.

    `predict_rows` takes the worker's windows (m, n_steps: the longest window; the first
    n_steps - filled values of a row are not real), how many values are real, and each
    series' period, and calls each family's models once on their rows.
    """

    def __init__(self, version: str, manifest: dict[str, Any], index: dict[str, Any],
                 families: list[tuple[dict[str, Any], LoadedModel, LoadedModel | None]],
                 single: list[LoadedModel | None] | None = None) -> None:
        self.version = version
        self.manifest = manifest
        self.index = index
        self.families = families
        self.single = single or [None] * len(families)
        self.n_steps = int(index["width"])
        self.horizon = int(manifest["horizon"])
        self.has_interval = manifest.get("outputs") == "interval"
        self.width = self.horizon * (3 if self.has_interval else 1)
        self.min_values = int(index.get("min_values", self.n_steps))
        self.periods = [int(spec["period"]) for spec, _, _ in families]
        self.table = {str(k).encode(): int(v) for k, v in index.get("series", {}).items()}
        self.singles = {str(k).encode() for k in index.get("single_series", [])}
        self.smooth = smoothing.SmoothTable(index.get("smooth_series", {}),
                                            index.get("smooth_q", []), self.horizon,
                                            self.has_interval)
        if self.smooth and not (1 <= self.smooth.n_steps.min() <= self.smooth.n_steps.max()
                                <= self.n_steps):
            raise ValueError(f"smoothing windows outside 1..{self.n_steps}")

    def smooth_of(self, names: list[bytes]) -> np.ndarray:
        """Each series' row in the smoothing table (-1: not served by its own smoothing)."""
        return self.smooth.rows_of(names)

    def single_of(self, names: list[bytes]) -> np.ndarray:
        """Which series the version serves by their family's single expert when full."""
        singles = self.singles
        return np.fromiter((n in singles for n in names), dtype=bool, count=len(names))

    def periods_of(self, names: list[bytes]) -> np.ndarray:
        """Each series' period from the training data (0: the trainer never saw it)."""
        table = self.table
        return np.asarray([table.get(n, 0) for n in names], dtype=np.int64)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Full windows (m, n_steps), each routed by the period detected from it."""
        x = np.asarray(windows, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_steps:
            raise ValueError(f"expected windows of shape (m, {self.n_steps}), got {x.shape}")
        filled = np.full(len(x), self.n_steps)
        return self.predict_rows(x, filled, season.detect(x))[0]

    def predict_rows(self, windows: np.ndarray, filled: np.ndarray, periods: np.ndarray,
                     single: np.ndarray | None = None, smooth: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(forecasts (m, width), full (m,): the row's family window was full); rows marked
        in `single` (see `single_of`) go to their family's single expert once full, rows
        with a `smooth` row (see `smooth_of`) to their own smoothing (on what they have
        while young)."""
        m, n = windows.shape
        fam = bundle.route(periods, self.periods)
        out = np.empty((m, self.width), dtype=np.float32)
        full = np.zeros(m, dtype=bool)
        if smooth is not None and self.smooth:
            own = smooth >= 0
            if own.any():
                out[own], full[own] = self.smooth.predict(windows[own], smooth[own], filled[own])
                fam = np.where(own, -1, fam)
        for i, (spec, whole, warm) in enumerate(self.families):
            rows = fam == i
            if not rows.any():
                continue
            k = int(spec["n_steps"])
            ready = rows & (filled >= k)
            alone = self.single[i]
            if alone is not None and single is not None and (ready & single).any():
                by_one = ready & single
                out[by_one] = alone.predict(windows[by_one][:, n - k:])
                full[by_one] = True
                ready = ready & ~single
                rows = rows & ~by_one
            if ready.all():
                out[:] = whole.predict(windows[:, n - k:])
                full[:] = True
                continue
            if ready.any():
                out[ready] = whole.predict(windows[ready][:, n - k:])
                full[ready] = True
            young = rows & ~ready
            if young.any():
                x = bundle.with_nan_past(windows[young][:, n - k:], filled[young])
                if warm is None:  # no warm-up part: the last value (no interval width)
                    last = windows[young][:, -1:]
                    out[young] = np.repeat(last, self.width, axis=1)
                else:
                    out[young] = warm.predict(x)
        return out, full

    def __repr__(self) -> str:
        return (f"BundleModel({self.version!r}, periods={self.periods}, "
                f"n_steps={self.n_steps}, horizon={self.horizon})")


def _load_bundle(blob: bytes, manifest: dict[str, Any], numpy: bool = True) -> BundleModel:
    try:
        index, parts = bundle.unpack(blob)
    except Exception as exc:
        raise ModelRejected(f"bad bundle: {type(exc).__name__}: {exc}") from None
    if index.get("format") != bundle.FORMAT:
        raise ModelRejected(f"bundle format {index.get('format')!r}, expected {bundle.FORMAT}")
    version = str(manifest.get("version", "local"))
    width, horizon = int(index.get("width", 0)), int(manifest["horizon"])
    if width != manifest["n_steps"] or not index.get("families"):
        raise ModelRejected(f"bundle width {width} does not match n_steps "
                            f"{manifest['n_steps']}, or it has no families")
    families = []
    single: list[LoadedModel | None] = []
    for spec in index["families"]:
        k = int(spec["n_steps"])
        if not 1 <= k <= width:
            raise ModelRejected(f"bundle family window {k} outside 1..{width}")
        part = {"version": version, "n_steps": k, "horizon": horizon,
                "outputs": manifest.get("outputs", "point")}
        for name in (spec["full"], spec.get("warm")):
            if name is not None and name not in parts:
                raise ModelRejected(f"bundle part {name!r} is missing")
        whole = _load_part(parts[spec["full"]], part, f"part {spec['full']}", numpy)
        warm = None
        if spec.get("warm"):
            warm = _load_part(parts[spec["warm"]], {**part, "partial": True},
                              f"part {spec['warm']}", numpy)
        families.append((spec, whole, warm))
        name = spec.get("single")
        if name is not None and name not in parts:
            raise ModelRejected(f"bundle part {name!r} is missing")
        single.append(_load_part(parts[name], part, f"part {name}", numpy) if name else None)
    try:
        loaded = BundleModel(version, manifest, index, families, single)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ModelRejected(f"bad bundle smoothing table: {exc}") from None
    probe = np.stack([np.linspace(1.0, 2.0, width), np.linspace(-50.0, 100.0, width)])
    _probe(loaded, probe.astype(np.float32), "bundle")
    return loaded


def rebundle(old: BundleModel, blob: bytes, manifest: dict[str, Any], numpy: bool = True
             ) -> BundleModel:
    """`old`'s parts under the index of `blob` (the same parts, other routes: the trainer's
    second assembly); only parts `old` lacks are loaded. No checks: the trainer made both."""
    index, parts = bundle.unpack(blob)
    version = str(manifest.get("version", "local"))
    single = []
    for spec, alone in zip(index["families"], old.single, strict=True):
        name = spec.get("single")
        if alone is None and name:
            alone = _load_part(parts[name], {"version": version, "n_steps": int(spec["n_steps"]),
                                             "horizon": old.horizon,
                                             "outputs": manifest.get("outputs", "point")},
                               f"part {name}", numpy)
        single.append(alone if name else None)
    return BundleModel(version, manifest, index, old.families, single)


def load_version(client: Any, version: str, hmac_key: str = ""
                 ) -> LoadedModel | BundleModel:
    """Fetch a version's blob and manifest from the registry, check and load it."""
    try:
        manifest = registry.get_manifest(client, version)
        blob = registry.get_blob(client, version)
    except registry.RegistryError as exc:
        raise ModelRejected(str(exc)) from None
    if manifest.get("version", version) != version:
        raise ModelRejected(f"manifest of {version} names version {manifest.get('version')!r}")
    return load_bytes(blob, {**manifest, "version": version}, hmac_key)
