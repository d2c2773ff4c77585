"""The ``twin`` kind of ``patgw model``: fit a twin model from exported runs and reference
values, check one open loop against another run, show what a file holds.

::

    patgw model fit twin --data run1.jsonl --reference run1.csv [--data run2.jsonl ...] \\
        --output cho-twin.json --id cho-twin --model-version 1 [--time-scale 1440]
    patgw model check cho-twin.json --data run3.jsonl --reference run3.csv
    patgw model show cho-twin.json [--json]

``--data`` is a ``patgw export --format jsonl`` file of one run; ``--reference`` its reference
CSV (``time,vcd [10*6/mL],glucose [g/L],lactate [g/L],titer [g/L]``, any subset of those
columns, units converted). Process time: ``--age GLOB`` names a batch-age signal (hours) in the
export; without one, the time since the run's first sample times ``--time-scale``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway import UnitError, compile_conversion
from plugins.softsensor.data import (
    DataError,
    ScalarSeries,
    read_references_csv,
    read_scalar_series,
)

from .fit import DEFAULT_PARAMETERS, Run, fit_parameters, score
from .model import (
    NOISE,
    PARAMETERS,
    TwinModel,
    TwinModelFileError,
    load_twin_model,
    save_twin_model,
)

__all__ = ["configure_check", "configure_fit", "configure_show"]

Array = NDArray[np.float64]
_REFERENCES = {"vcd": "10*6/mL", "glucose": "g/L", "lactate": "g/L", "titer": "g/L"}


class _InputError(Exception):
    """A problem with what the user gave; its message is the one line to print."""


def _handler(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (_InputError, DataError, TwinModelFileError, UnitError, ValueError, OSError) as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            print(f"patgw model {args.model_command}: {message}", file=sys.stderr)
            return 2

    return handle


def _data_options(parser: argparse.ArgumentParser, *, many: bool) -> None:
    action = "append" if many else "store"
    parser.add_argument(
        "--data", type=Path, action=action, required=True, help="'patgw export' JSONL of a run"
    )
    parser.add_argument(
        "--reference", type=Path, action=action, required=True, help="its reference values, CSV"
    )
    parser.add_argument(
        "--feed-total", default="*/total_volume", metavar="GLOB", help="the feed total signal"
    )
    parser.add_argument(
        "--base-total", default="*/base_total", metavar="GLOB", help="the base total signal"
    )
    parser.add_argument("--age", metavar="GLOB", help="a batch-age signal (h): process time")
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="process s per wall s without --age (1)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def configure_fit(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``patgw model fit twin``."""
    _data_options(parser, many=True)
    parser.add_argument("--output", "-o", type=Path, required=True, help="model file to write")
    parser.add_argument("--id", dest="model_id", required=True, help="model id")
    parser.add_argument("--model-version", required=True, help="model version")
    parser.add_argument("--description", default="", help="what the model is for")
    parser.add_argument(
        "--feed-glucose", type=float, default=400.0, help="glucose in the feed, g/L (400)"
    )
    parser.add_argument("--volume", type=float, default=2.0, help="volume at inoculation, L (2)")
    parser.add_argument(
        "--max-evaluations", type=int, default=300, help="model runs the fit may take (300)"
    )
    return _handler(_fit)


def configure_check(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``patgw model check TWIN.json --data ... --reference ...`` (open-loop errors)."""
    _data_options(parser, many=False)
    return _handler(_check)


def configure_show(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``patgw model show TWIN.json [--json]``."""
    parser.add_argument("--json", action="store_true", help="print JSON")
    return _handler(_show)


# --- reading runs ---------------------------------------------------------------------------


def _read_export(path: Path, globs: dict[str, str | None]) -> dict[str, ScalarSeries]:
    """The good samples of each role's signal (the first signal matching its glob); the
    totals in mL."""
    out = read_scalar_series(path, globs)
    for role in ("feed_total", "base_total"):
        series = out.get(role)
        if series is not None:
            scale = compile_conversion(series.unit, "mL").scale
            series.values = [value * scale for value in series.values]
    return out


def _run(args: argparse.Namespace, data: Path, reference: Path) -> Run:
    series = _read_export(
        data, {"feed_total": args.feed_total, "base_total": args.base_total, "age": args.age}
    )
    feed = series.get("feed_total")
    if feed is None or len(feed.times) < 2:
        raise _InputError(f"{data}: no good samples of a feed total matching {args.feed_total!r}")
    t_ns = np.asarray(feed.times, dtype=np.int64)
    order = np.argsort(t_ns, kind="stable")
    t_ns = t_ns[order]
    feed_mL = np.asarray(feed.values)[order]

    def process_h(ns: NDArray[np.int64]) -> Array:
        age = series.get("age")
        if args.age is not None:
            if age is None or not age.times:
                raise _InputError(f"{data}: no good samples of an age matching {args.age!r}")
            a_t = np.asarray(age.times, dtype=np.int64)
            a_o = np.argsort(a_t)
            a_t, a_v = a_t[a_o], np.asarray(age.values)[a_o]
            scale = args.time_scale
            idx = np.clip(np.searchsorted(a_t, ns, side="right") - 1, 0, len(a_t) - 1)
            return np.asarray(a_v[idx] + (ns - a_t[idx]) / 3.6e12 * scale, dtype=np.float64)
        return np.asarray((ns - t_ns[0]) / 3.6e12 * args.time_scale, dtype=np.float64)

    times_h = process_h(t_ns)
    base = series.get("base_total")
    base_mL = None
    if base is not None and len(base.times) >= 2:
        b_t = np.asarray(base.times, dtype=np.int64)
        b_o = np.argsort(b_t)
        base_mL = np.interp(times_h, process_h(b_t[b_o]), np.asarray(base.values)[b_o])
    refs = read_references_csv(reference)
    columns: dict[str, Array] = {}
    for k, (name, unit) in enumerate(refs.targets):
        if name in _REFERENCES:
            conversion = compile_conversion(unit, _REFERENCES[name])
            columns[name] = refs.values[:, k] * conversion.scale + conversion.offset
    if not columns:
        raise _InputError(f"{reference}: no column of {', '.join(_REFERENCES)}")
    ref_h = process_h(np.asarray(refs.times, dtype=np.int64))
    inside = (ref_h >= times_h[0]) & (ref_h <= times_h[-1])
    if not inside.any():
        raise _InputError(f"{reference}: no reference lies within the run in {data}")
    nan = np.full(len(ref_h), np.nan)
    return Run(
        times_h,
        feed_mL,
        base_mL,
        ref_h[inside],
        *(columns.get(name, nan)[inside] for name in ("vcd", "glucose", "lactate", "titer")),
    )


# --- fit, check, show -------------------------------------------------------------------------


def _fit(args: argparse.Namespace) -> int:
    for option, text in (("--id", args.model_id), ("--model-version", args.model_version)):
        if not text.strip():
            raise _InputError(f"{option}: must not be empty (a model file needs it)")
    if len(args.data) != len(args.reference):
        raise _InputError("give one --reference per --data (a run each)")
    if not args.output.parent.is_dir():
        raise _InputError(f"--output: the folder {args.output.parent} does not exist")
    runs = [_run(args, d, r) for d, r in zip(args.data, args.reference, strict=True)]
    start = dict(DEFAULT_PARAMETERS, feed_glucose=args.feed_glucose, volume0=args.volume)
    first = runs[0]
    for name, key in (("vcd", "x0"), ("glucose", "g0"), ("lactate", "l0"), ("titer", "p0")):
        value = getattr(first, name)[0]
        if math.isfinite(value):
            start[key] = float(value)
    parameters, noise = fit_parameters(runs, start, max_evaluations=args.max_evaluations)
    figures = score(parameters, runs)
    inputs = {"feed_total": "mL", "glucose": "g/L", "lactate": "g/L"}
    if all(run.base_mL is not None for run in runs):
        inputs["base_total"] = "mL"
    model = save_twin_model(
        TwinModel(
            id=args.model_id,
            version=args.model_version,
            parameters=parameters,
            noise=noise,
            inputs=inputs,
            description=args.description,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            training={
                "runs": [
                    {"data": str(d), "reference": str(r), "references": len(run.ref_times_h)}
                    for d, r, run in zip(args.data, args.reference, runs, strict=True)
                ],
                "open_loop": figures,
            },
        ),
        args.output,
    )
    summary = {
        "model": {"id": model.id, "version": model.version, "sha256": model.sha256},
        "runs": len(runs),
        "open_loop": figures,
        "output": str(args.output),
    }
    _print(summary, args.json)
    return 0


def _check(args: argparse.Namespace) -> int:
    model = load_twin_model(args.model)
    run = _run(args, args.data, args.reference)
    summary = {
        "model": {"id": model.id, "version": model.version, "sha256": model.sha256},
        "open_loop": score(model.parameters, [run]),
    }
    _print(summary, args.json)
    return 0


def _show(args: argparse.Namespace) -> int:
    model = load_twin_model(args.model)
    summary = {
        "kind": "twin",
        "id": model.id,
        "version": model.version,
        "description": model.description,
        "created": model.created,
        "sha256": model.sha256,
        "inputs": dict(model.inputs),
        "parameters": dict(model.parameters),
        "noise": dict(model.noise),
        "training": dict(model.training),
    }
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    print(f"twin model {model.id} v{model.version}, created {model.created}")
    if model.description:
        print(f"  {model.description}")
    print(f"sha256 {model.sha256}")
    print("inputs: " + ", ".join(f"{k} [{v}]" for k, v in model.inputs.items()))
    for name, value in model.parameters.items():
        print(f"  {name:<18} {value:<12.6g} {PARAMETERS[name][2]}")
    print("estimator noise:")
    for name, value in model.noise.items():
        print(f"  {name:<18} {value:<12.6g} {NOISE[name][2]}")
    return 0


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    m = summary["model"]
    print(f"twin model {m['id']} v{m['version']} (sha256 {m['sha256'][:16]})")
    for key, value in summary["open_loop"].items():
        print(f"  open loop {key}: {'n/a' if value is None else f'{value:.4g}'}")
    if "output" in summary:
        print(f"written to {summary['output']}")
