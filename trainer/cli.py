"""`forecast train`: load data, train, evaluate, write the artifact, publish through the gate.

Exit codes: 0 trained (and published as current, unless --no-publish); 2 a user error
(missing or bad CSV, too little data, Redis unreachable); 3 the gate refused the model: it
is stored as a version but not current (`forecast models promote VERSION` or --force), and
nothing new is current; 5 the gate refused the hybrid (stored, not current) and its
fallback, the best single forecaster on validation, was published as current (a version
with per-series periods, the defaults of --csv and --from-stream: see `publish.fallback_gate`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from forecast.errors import DataError, ModelRejected, UsageError
from forecast.settings import Settings

log = logging.getLogger(__name__)

EXIT_REFUSED = 3
EXIT_FALLBACK = 5


def _summary(trained: Any) -> list[str]:
    m = trained.manifest
    d, t, met = m["data"], m["train"], m["metrics"]
    lines = [
        f"trained {m.get('forecaster', 'rnn')} {m['arch']} (n_steps={m['n_steps']}, "
        f"horizon={m['horizon']}) on {d['source']}: "
        f"{d['series']} series, {d['values']} values, {d['train_windows']} train / "
        f"{d['val_windows']} validation windows; {t['epochs_run']} epochs in {t['seconds']}s",
        f"{met['holdout']} MAE {met['model']['mae']:.6g} (naive {met['naive']['mae']:.6g}, "
        f"seasonal naive {met['seasonal_naive']['mae']:.6g}, period {met['season_period']})",
    ]
    if met["model"].get("mase") is not None and met["naive"].get("mase") is not None:
        lines.append(f"{met['holdout']} MASE {met['model']['mase']:.4g} (naive "
                     f"{met['naive']['mase']:.4g}, seasonal naive "
                     f"{met['seasonal_naive']['mase']:.4g})")
    if m["outputs"] == "interval":
        lines.append(f"{round(100 * m['coverage'])}% interval half-widths per step "
                     f"(scaled units): {[round(q, 4) for q in m['conformal_q']]}")
    return lines


def _fallback(client: Any, trained: Any, dataset: Any, settings: Settings,
              refused: dict[str, Any]) -> int:
    """Publish the refused version's fallback as current when the gate allows (never nothing)."""
    from trainer import families, publish

    fb = families.fallback(trained, dataset, settings)
    fb.manifest = {**fb.manifest, "auto": trained.manifest.get("auto", {})}
    current = publish.score_current(client, fb, settings.model_hmac_key)
    gate = publish.fallback_gate(fb, refused, current)
    met = fb.evaluation
    if gate["decision"] != "promote":
        print(f"forecast: gate: {gate['reason']} (promote with `forecast models promote "
              f"VERSION` or retrain with --force)", file=sys.stderr)
        return EXIT_REFUSED
    version = publish.publish_trained(client, fb, gate)
    out = publish.write_local(settings.model_dir, version, fb.blob, fb.manifest)
    print(f"fallback: {gate['forecasters']}; {met['holdout']} MASE "
          f"{met['model'].get('mase')} (naive {met['naive'].get('mase')})")
    print(f"published {version} as current (fallback: {gate['forecasters']}); "
          f"artifact {out / 'model.keras'}")
    return EXIT_FALLBACK


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the train command; returns the exit code."""
    from forecast.logs import setup_logging

    setup_logging(settings.log_level if not args.quiet else "WARNING", settings.log_json)
    from forecast.redis_conn import connect
    from trainer import data, windows

    client = None
    if args.from_stream or not args.no_publish:
        client = connect(settings)
        client.ping()  # fail fast, before training, when Redis is unreachable
    if getattr(args, "watch", False):
        from forecast import registry
        from trainer import train, watch

        if args.example or client is None:
            raise UsageError("--watch retrains on the input streams: use it with --from-stream "
                             "(or --csv FILE for the first model of an empty registry)")
        if args.csv and registry.current_version(client) is None:
            args.watch = False
            run(args, settings)  # the first model, from the CSV, through the gate
        return watch.run(client, settings, train.progress_verbosity(args.quiet))
    dataset = data.load(args, settings, client)
    chosen: dict[str, Any] = {}
    if not args.example:  # --example keeps the tutorial's own settings exactly
        from trainer import auto

        settings, chosen = auto.resolve(settings, dataset)
        if chosen and not args.quiet:
            print("chosen for this data (flags override): "
                  + ", ".join(f"{k}={v}" for k, v in chosen.items()))
    # Data errors (too little data) surface here, before any training.
    ws = None
    if settings.forecaster == "hybrid" and settings.per_series:
        windows.build_partial(dataset, settings.n_steps, settings.horizon,
                              settings.val_fraction)
    else:
        ws = windows.build(dataset, settings.n_steps, settings.horizon, settings.val_fraction)
    from trainer import artifact, publish, report, train

    try:
        trained = artifact.train_model(dataset, settings, train.progress_verbosity(args.quiet), ws)
    except ModelRejected as exc:
        raise ModelRejected(f"the trained model failed its own load checks: {exc}") from None
    except FloatingPointError as exc:
        raise DataError(f"training failed: {exc}; check the data for extreme values") from None
    trained.manifest = {**trained.manifest, "auto": chosen}
    for line in _summary(trained):
        print(line)
    if args.no_publish or client is None:
        gate = publish.decide(trained, None, args.force)
        trained.manifest = {**trained.manifest, "gate": {**gate, "decision": "not_published"}}
        version = "local"
    else:
        current = publish.score_current(client, trained, settings.model_hmac_key)
        gate = publish.decide(trained, current, args.force)
        version = publish.publish_trained(client, trained, gate)
        if gate["decision"] == "refuse" and trained.parts is not None:
            out = publish.write_local(settings.model_dir, version, trained.blob,
                                      trained.manifest)
            print(f"published {version}; artifact {out / 'model.keras'}")
            print(f"forecast: gate: {version} stored but not current: {gate['reason']}",
                  file=sys.stderr)
            return _fallback(client, trained, dataset, settings, gate)
    out = publish.write_local(settings.model_dir, version, trained.blob, trained.manifest)
    if args.report:
        paths = report.write(args.report, trained.manifest, trained.ws, trained.holdout_pred)
        print(f"report: {paths['json']}, {paths['md']}, {paths['png']}")
    if version == "local":
        print(f"not published (--no-publish); artifact {out / 'model.keras'}")
        return 0
    if gate["decision"] == "promote":
        forced = " (forced)" if gate["forced"] else ""
        print(f"published {version} as current{forced}; artifact {out / 'model.keras'}")
        return 0
    print(f"published {version}; artifact {out / 'model.keras'}")
    print(f"forecast: gate: {version} stored but not current: {gate['reason']} "
          f"(promote with `forecast models promote {version}` or retrain with --force)",
          file=sys.stderr)
    return EXIT_REFUSED
