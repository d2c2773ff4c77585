"""``patgw model fit pca``: fit the anomaly processor's PCA model from exported normal runs.

::

    patgw model fit pca --data normal.jsonl --signals reactor1/controller/ph,... \\
        --output configs/models/reactor-normal-pca.json --id reactor1-normal --model-version 1
    patgw model show configs/models/reactor-normal-pca.json
    patgw model check configs/models/reactor-normal-pca.json --data later.jsonl

The export (``patgw export --format jsonl``, several files allowed) holds normal runs one after
the other; a run ends where the first signal has a gap longer than ``--run-gap-h`` hours, and
its process time counts from its first sample. Every listed signal is read as of the first
signal's samples (its last good value then). Exit codes: 0 success; 2 bad input, one line on
standard error. ``--json`` prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway import Quality
from gateway.export import sample_from_json

from .checks import Alarm
from .mspc import ModelFileError, PcaModel, Run, fit_pca, load_model, save_model

__all__ = ["configure_check", "configure_fit", "configure_show", "read_runs"]

_NS_PER_H = 3_600_000_000_000


class InputError(Exception):
    """A problem with what the user gave; its message is the one line to print."""


def configure_fit(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """The arguments of ``patgw model fit pca``; returns its handler (exit code)."""
    parser.add_argument(
        "--data", type=Path, action="append", required=True, help="JSONL export of normal runs"
    )
    parser.add_argument(
        "--signals", required=True, help="comma-separated full signal ids, the first paces"
    )
    parser.add_argument("--output", type=Path, required=True, help="model file to write")
    parser.add_argument("--id", required=True, help="the model's id")
    parser.add_argument("--model-version", type=int, required=True, help="the model's version")
    parser.add_argument("--bin-h", type=float, default=2.0, help="maturity bin, h (default 2)")
    parser.add_argument("--components", type=int, default=None, help="PCA components")
    parser.add_argument("--confidence", type=float, default=0.99, help="limit level (0.99)")
    parser.add_argument("--run-gap-h", type=float, default=24.0, help="gap that ends a run, h")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return _fit


def configure_show(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """The arguments of ``patgw model show FILE`` for a PCA model (``patgw model`` adds FILE as
    ``args.model``); returns its handler."""
    parser.add_argument("--json", action="store_true", help="print JSON")
    return _show


def configure_check(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """The arguments of ``patgw model check FILE`` for a PCA model: score exported runs and
    report, per run, the fraction of points over each limit (about 1 - confidence on normal
    runs) and the alarms the processor's default persistence rule (3 of 5) would raise."""
    parser.add_argument(
        "--data", type=Path, action="append", required=True, help="JSONL export of runs"
    )
    parser.add_argument("--run-gap-h", type=float, default=24.0, help="gap that ends a run, h")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return _check


def read_runs(
    paths: Sequence[Path], signals: Sequence[str], run_gap_h: float
) -> tuple[list[Run], list[str]]:
    """Runs and units of ``signals`` from JSONL exports (module docstring)."""
    wanted = set(signals)
    series: dict[str, list[tuple[int, float]]] = {s: [] for s in signals}
    units: dict[str, str] = {}
    for path in paths:
        try:
            with path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    try:
                        sample = sample_from_json(line)
                    except (ValueError, KeyError, TypeError) as exc:
                        raise InputError(f"{path}:{number}: not an exported sample: {exc}") from exc
                    if sample.signal not in wanted:
                        continue
                    unit = units.setdefault(sample.signal, sample.unit)
                    if unit != sample.unit:
                        raise InputError(
                            f"{path}:{number}: {sample.signal} in {sample.unit!r}, earlier"
                            f" in {unit!r}"
                        )
                    if sample.quality == Quality.BAD or not isinstance(sample.value, int | float):
                        continue
                    series[sample.signal].append((sample.source_ts, float(sample.value)))
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    absent = [s for s in signals if not series[s]]
    if absent:
        raise InputError(f"no good samples of {', '.join(absent)} in the data")
    pace = sorted(series[signals[0]])
    ts = np.array([t for t, _ in pace], dtype=np.int64)
    columns = [np.array([v for _, v in pace])]
    for signal in signals[1:]:
        other = sorted(series[signal])
        other_ts = np.array([t for t, _ in other], dtype=np.int64)
        other_v = np.array([v for _, v in other])
        at = np.searchsorted(other_ts, ts, side="right") - 1
        column = np.where(at >= 0, other_v[np.maximum(at, 0)], np.nan)
        columns.append(column)
    values = np.column_stack(columns)
    cuts = np.flatnonzero(np.diff(ts) > run_gap_h * _NS_PER_H) + 1
    runs = []
    for k, (start, stop) in enumerate(zip(np.r_[0, cuts], np.r_[cuts, len(ts)], strict=True)):
        rows = values[start:stop]
        keep = np.isfinite(rows).all(axis=1)
        hours = (ts[start:stop] - ts[start]) / _NS_PER_H
        runs.append(Run(f"run{k + 1}", hours[keep], rows[keep]))
    return runs, [units[s] for s in signals]


def _fit(args: argparse.Namespace) -> int:
    signals = [s.strip() for s in args.signals.split(",") if s.strip()]
    try:
        if len(set(signals)) != len(signals):
            raise InputError("--signals lists a signal twice")
        if not 0 < args.confidence < 1:
            raise InputError(f"--confidence {args.confidence} must be between 0 and 1")
        runs, units = read_runs(args.data, signals, args.run_gap_h)
        model = fit_pca(
            runs,
            signals=signals,
            units=units,
            model_id=args.id,
            version=args.model_version,
            bin_h=args.bin_h,
            components=args.components,
            confidence=args.confidence,
        )
        save_model(model, args.output)
        model = load_model(args.output)
    except (InputError, ValueError) as exc:
        print(f"patgw model fit pca: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"patgw model fit pca: cannot write {args.output}: {exc}", file=sys.stderr)
        return 2
    _print(_summary(model), args.json)
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        model = load_model(args.model)
    except ModelFileError as exc:
        print(f"patgw model show pca: {exc}", file=sys.stderr)
        return 2
    _print(_summary(model), args.json)
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        model = load_model(args.model)
        runs, units = read_runs(args.data, list(model.signals), args.run_gap_h)
        if tuple(units) != model.units:
            raise InputError(f"the data's units {units} are not the model's {list(model.units)}")
    except (InputError, ModelFileError) as exc:
        print(f"patgw model check: {exc}", file=sys.stderr)
        return 2
    report = []
    for run in runs:
        t2, q = model.score_many(run.hours, run.values)
        ratio = np.maximum(t2 / model.t2_limit, q / model.q_limit)
        alarm = Alarm("mspc", severity=1)
        raised = sum(
            1
            for r in ratio.tolist()
            if (step := alarm.update(r, 0)) is not None and step.action == "raised"
        )
        report.append(
            {
                "run": run.name,
                "points": len(run.hours),
                "hours": round(float(run.hours.max()), 3) if len(run.hours) else 0.0,
                "over_t2": round(float((t2 > model.t2_limit).mean()), 5),
                "over_q": round(float((q > model.q_limit).mean()), 5),
                "alarms": raised,
            }
        )
    if args.json:
        print(json.dumps({"model": _summary(model)["sha256"], "runs": report}))
    else:
        for row in report:
            print(" ".join(f"{key}={value}" for key, value in row.items()))
    return 0


def _summary(model: PcaModel) -> dict[str, Any]:
    return {
        "id": model.id,
        "version": model.version,
        "sha256": model.sha256,
        "signals": [f"{s} [{u}]" for s, u in zip(model.signals, model.units, strict=True)],
        "components": model.components,
        "bin_h": model.bin_h,
        "maturity_h": model.max_maturity_h,
        "confidence": model.confidence,
        "t2_limit": round(model.t2_limit, 6),
        "q_limit": round(model.q_limit, 6),
        "training": dict(model.training),
    }


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    for key, value in summary.items():
        print(f"{key}: {value}")
