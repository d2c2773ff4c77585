"""The ``rtd`` kind of ``patgw model`` (fit an RTD model from a tracer step test, check it on
another, show a file) and the ``patgw genealogy`` command.

::

    patgw model fit rtd --data step.jsonl --inlet '*/harvest_conductivity' \\
        --outlet '*/feed_conductivity' --flow '*/feed_flow' --unit surge_tank \\
        --output surge-rtd.json --id surge-rtd --model-version 1 [--time-scale 60]
    patgw model check surge-rtd.json --data step2.jsonl --inlet ... --outlet ... --flow ...
    patgw model show surge-rtd.json [--json]
    patgw genealogy CONFIG [--processor ID] [--format json|csv] [-o FILE]

``--data`` is a ``patgw export --format jsonl`` file holding a tracer step: the unit's inlet
and outlet signals (conductivity) and the flow through it (any flow unit; per *process* time).
Process time is the samples' time times ``--time-scale``, or from a batch-age signal
(``--age GLOB``). The fit tries 1..``--max-tanks`` tanks and fits the volume and dead volume of
each (least squares, the sensors' offset and gain free), and keeps the best.
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

from gateway import ConfigError, UnitError, build_registry, compile_conversion
from gateway import load_plan as gateway_load_plan
from plugins.softsensor.data import DataError, ScalarSeries, read_scalar_series

from .genealogy import export_csv, genealogy_path, read_genealogy
from .processor import TraceProcessor
from .rtd import (
    MAX_TANKS,
    RtdModel,
    RtdModelFileError,
    load_rtd_model,
    save_rtd_model,
    step_response,
)

__all__ = ["configure_check", "configure_fit", "configure_genealogy", "configure_show"]

Array = NDArray[np.float64]
_MIN_POINTS = 20
_GRID = 1500


class _InputError(Exception):
    """A problem with what the user gave; its message is the one line to print."""


def _handler(
    command: Callable[[argparse.Namespace], int], name: str
) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (_InputError, DataError, RtdModelFileError, UnitError, ValueError, OSError) as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            action = getattr(args, "model_command", None)
            print(f"patgw {name}{' ' + action if action else ''}: {message}", file=sys.stderr)
            return 2

    return handle


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="'patgw export' JSONL: a step")
    parser.add_argument("--inlet", required=True, metavar="GLOB", help="the inlet tracer signal")
    parser.add_argument("--outlet", required=True, metavar="GLOB", help="the outlet tracer signal")
    parser.add_argument("--flow", required=True, metavar="GLOB", help="the flow through the unit")
    parser.add_argument("--age", metavar="GLOB", help="a batch-age signal (h): process time")
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="process s per wall s without --age (1)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def configure_fit(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``patgw model fit rtd``."""
    _data_options(parser)
    parser.add_argument("--unit", required=True, help="the unit operation (e.g. surge_tank)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="model file to write")
    parser.add_argument("--id", dest="model_id", required=True, help="model id")
    parser.add_argument("--model-version", required=True, help="model version")
    parser.add_argument("--description", default="", help="what the model is for")
    parser.add_argument(
        "--max-tanks", type=int, default=20, help=f"most tanks tried (1..{MAX_TANKS}; 20)"
    )
    parser.add_argument(
        "--min-r2", type=float, default=0.9, help="refuse a fit explaining less (0.9)"
    )
    return _handler(_fit, "model")


def configure_check(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``patgw model check RTD.json --data ...``: the model's error on another step test."""
    _data_options(parser)
    return _handler(_check, "model")


def configure_show(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``patgw model show RTD.json [--json]``."""
    parser.add_argument("--json", action="store_true", help="print JSON")
    return _handler(_show, "model")


# --- reading a step test ------------------------------------------------------------------------


class StepTest:
    """A tracer step on a uniform grid of volume flowed (mL)."""

    def __init__(self, volume: Array, inlet: Array, outlet: Array, hours: float) -> None:
        self.volume, self.inlet, self.outlet, self.hours = volume, inlet, outlet, hours

    def predict(self, n: int, volume_mL: float, dead_mL: float) -> tuple[Array, float, float]:
        """The outlet the model gives, the offset and gain fitted (least squares)."""
        from scipy.signal import fftconvolve

        response = step_response(self.volume - self.volume[0], n, volume_mL, dead_mL)
        increments = np.diff(self.inlet, prepend=self.inlet[0])
        increments[0] = 0.0
        shape = fftconvolve(increments, response)[: len(self.volume)]
        design = np.column_stack([np.ones_like(shape), shape])
        coef, *_ = np.linalg.lstsq(design, self.outlet, rcond=None)
        return design @ coef, float(coef[0]), float(coef[1])


def read_step(args: argparse.Namespace) -> StepTest:
    """The inlet, outlet and flow of a step test, on a uniform volume grid."""
    globs = {"inlet": args.inlet, "outlet": args.outlet, "flow": args.flow, "age": args.age}
    path: Path = args.data
    series = read_scalar_series(path, globs)
    # The outlet's response is what is fitted: it needs points. The inlet and the flow may be
    # reported by exception (an OPC UA subscription sends a value when it changes): each value
    # holds until the next, so a step needs only its value before and after.
    for role, least in (("inlet", 2), ("outlet", _MIN_POINTS), ("flow", 1)):
        count = len(series[role].times) if role in series else 0
        if count < least:
            raise _InputError(
                f"{path}: {count} good samples of --{role} {globs[role]!r}; a step test needs at"
                f" least {least}"
            )
    try:
        flow_scale = compile_conversion(series["flow"].unit, "mL/h").scale
    except UnitError as exc:
        raise _InputError(
            f"--flow: {series['flow'].signal} is in {series['flow'].unit!r}, not a flow ({exc})"
        ) from None
    t_out, y_out = _sorted(series["outlet"])
    hours = _process_hours(args, series, t_out, t_out[0])
    t_in, y_in = _sorted(series["inlet"])
    t_f, q = _sorted(series["flow"])
    inlet = _held(hours, _process_hours(args, series, t_in, t_out[0]), y_in)
    flow = _held(hours, _process_hours(args, series, t_f, t_out[0]), q * flow_scale)
    if np.any(flow < 0):
        raise _InputError(f"{path}: the flow is negative at times; not a step test through a unit")
    volume = np.concatenate([[0.0], np.cumsum(0.5 * (flow[1:] + flow[:-1]) * np.diff(hours))])
    if not volume[-1] > 0:
        raise _InputError(f"{path}: nothing flowed through the unit during the data")
    keep = np.concatenate([[True], np.diff(volume) > 0])
    volume, inlet, outlet = volume[keep], inlet[keep], y_out[keep]
    if len(volume) < _MIN_POINTS:
        raise _InputError(f"{path}: too few points while the flow ran ({len(volume)})")
    grid = np.linspace(volume[0], volume[-1], _GRID)
    inlet_g = np.interp(grid, volume, inlet)
    outlet_g = np.interp(grid, volume, outlet)
    span = float(np.percentile(inlet_g, 95) - np.percentile(inlet_g, 5))
    noise = float(np.median(np.abs(np.diff(inlet)))) * 1.4826
    if not span > 0 or span < 10 * noise:
        raise _InputError(
            f"{path}: no step in the inlet {series['inlet'].signal} (range {span:.3g}, noise"
            f" {noise:.3g}): a tracer step test changes the inlet clearly"
        )
    return StepTest(grid, inlet_g, outlet_g, float(hours[-1] - hours[0]))


def _held(at: Array, times: Array, values: Array) -> Array:
    """Each value held from its time until the next one (the first also before it): a
    reported-by-exception signal, not a line between two reports."""
    idx = np.clip(np.searchsorted(times, at, side="right") - 1, 0, len(times) - 1)
    return np.asarray(values[idx], dtype=np.float64)


def _sorted(series: ScalarSeries) -> tuple[NDArray[np.int64], Array]:
    t = np.asarray(series.times, dtype=np.int64)
    order = np.argsort(t, kind="stable")
    return t[order], np.asarray(series.values, dtype=np.float64)[order]


def _process_hours(
    args: argparse.Namespace,
    series: dict[str, ScalarSeries],
    ns: NDArray[np.int64],
    origin: int,
) -> Array:
    if args.age is None:
        return np.asarray((ns - origin) / 3.6e12 * args.time_scale, dtype=np.float64)
    if "age" not in series or not series["age"].times:
        raise _InputError(f"{args.data}: no good samples of an age matching {args.age!r}")
    try:
        to_h = compile_conversion(series["age"].unit, "h")
    except UnitError as exc:
        raise _InputError(
            f"--age: {series['age'].signal} is in {series['age'].unit!r}, not a time ({exc})"
        ) from None
    a_t, a_v = _sorted(series["age"])
    a_v = np.asarray([to_h(float(v)) for v in a_v], dtype=np.float64)
    idx = np.clip(np.searchsorted(a_t, ns, side="right") - 1, 0, len(a_t) - 1)
    return np.asarray(a_v[idx] + (ns - a_t[idx]) / 3.6e12 * args.time_scale, dtype=np.float64)


# --- fit, check, show ---------------------------------------------------------------------------


def fit_step(step: StepTest, max_tanks: int) -> tuple[int, float, float, dict[str, float]]:
    """Best (n, volume, dead volume) for the step, and its figures."""
    from scipy.optimize import least_squares

    total = float(step.volume[-1] - step.volume[0])
    lo, hi = float(np.min(step.outlet)), float(np.max(step.outlet))
    rising = step.inlet[-1] >= step.inlet[0]
    norm = (step.outlet - lo) / (hi - lo) if hi > lo else np.zeros_like(step.outlet)
    if not rising:
        norm = 1.0 - norm
    half = np.flatnonzero(norm >= 0.5)
    inlet_norm = (step.inlet - step.inlet.min()) / max(np.ptp(step.inlet), 1e-300)
    if not rising:
        inlet_norm = 1.0 - inlet_norm
    start = np.flatnonzero(inlet_norm >= 0.5)
    guess = total / 4
    if half.size and start.size:
        guess = max(total * 1e-3, float(step.volume[half[0]] - step.volume[start[0]]))
    best: tuple[float, int, float, float] | None = None
    for n in range(1, max_tanks + 1):

        def residuals(p: Array, n: int = n) -> Array:
            predicted, _, _ = step.predict(n, float(p[0]), float(p[1]))
            return np.asarray(predicted - step.outlet, dtype=np.float64)

        result = least_squares(
            residuals,
            x0=[guess, 0.0],
            bounds=([total * 1e-4, 0.0], [total * 10, total]),
            x_scale=[guess, guess],
            max_nfev=200,
        )
        sse = float(np.sum(result.fun**2))
        if best is None or sse < best[0]:
            best = (sse, n, float(result.x[0]), float(result.x[1]))
    assert best is not None
    sse, n, volume, dead = best
    predicted, offset, gain = step.predict(n, volume, dead)
    figures = _figures(step, predicted)
    figures.update(offset=offset, gain=gain)
    return n, volume, dead, figures


def _figures(step: StepTest, predicted: Array) -> dict[str, float]:
    residual = step.outlet - predicted
    rmse = float(np.sqrt(np.mean(residual**2)))
    var = float(np.var(step.outlet))
    r2 = 1.0 - float(np.mean(residual**2)) / var if var > 0 else 0.0
    return {"rmse": rmse, "r2": r2, "volume_flowed_mL": float(step.volume[-1]), "hours": step.hours}


def _fit(args: argparse.Namespace) -> int:
    for option, text in (
        ("--id", args.model_id),
        ("--model-version", args.model_version),
        ("--unit", args.unit),
    ):
        if not text.strip():
            raise _InputError(f"{option}: must not be empty (a model file needs it)")
    if not 1 <= args.max_tanks <= MAX_TANKS:
        raise _InputError(f"--max-tanks: {args.max_tanks} outside 1..{MAX_TANKS}")
    if not (math.isfinite(args.time_scale) and args.time_scale > 0):
        raise _InputError(f"--time-scale: {args.time_scale} is no positive number")
    if not args.output.parent.is_dir():
        raise _InputError(f"--output: the folder {args.output.parent} does not exist")
    step = read_step(args)
    n, volume, dead, figures = fit_step(step, args.max_tanks)
    if figures["gain"] <= 0 or figures["r2"] < args.min_r2:
        raise _InputError(
            f"the step test is not explained by tanks in series (r² {figures['r2']:.3f}, gain"
            f" {figures['gain']:.3g}; --min-r2 {args.min_r2}): no response at the outlet?"
        )
    if volume >= step.volume[-1] * 9.9:
        raise _InputError(
            f"fitted volume {volume:.4g} mL is far beyond the {step.volume[-1]:.4g} mL that"
            " flowed: the step test is too short to see the unit's response"
        )
    model = save_rtd_model(
        RtdModel(
            id=args.model_id,
            version=args.model_version,
            unit=args.unit,
            n_tanks=n,
            volume_mL=volume,
            dead_volume_mL=dead,
            description=args.description,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            training={
                "data": str(args.data),
                "signals": {"inlet": args.inlet, "outlet": args.outlet, "flow": args.flow},
                "time_scale": args.time_scale,
                "fit": figures,
            },
        ),
        args.output,
    )
    _print(model, figures, args.json, str(args.output))
    return 0


def _check(args: argparse.Namespace) -> int:
    model = load_rtd_model(args.model)
    step = read_step(args)
    predicted, offset, gain = step.predict(model.n_tanks, model.volume_mL, model.dead_volume_mL)
    figures = _figures(step, predicted)
    figures.update(offset=offset, gain=gain)
    _print(model, figures, args.json, None)
    return 0


def _summary(model: RtdModel) -> dict[str, Any]:
    return {
        "kind": "rtd",
        "id": model.id,
        "version": model.version,
        "unit": model.unit,
        "sha256": model.sha256,
        "n_tanks": model.n_tanks,
        "volume_mL": model.volume_mL,
        "dead_volume_mL": model.dead_volume_mL,
        "mean_residence_mL": model.mean_residence_mL,
    }


def _print(model: RtdModel, figures: dict[str, float], as_json: bool, output: str | None) -> None:
    summary = {**_summary(model), "fit": figures}
    if output:
        summary["output"] = output
    if as_json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    print(f"{model.describe()} (sha256 {model.sha256[:16]})")
    print(
        f"  {model.n_tanks} tanks, {model.volume_mL:.4g} mL, dead volume"
        f" {model.dead_volume_mL:.4g} mL (mean residence {model.mean_residence_mL:.4g} mL)"
    )
    print(f"  rmse {figures['rmse']:.4g}, r² {figures['r2']:.4f}, gain {figures['gain']:.4g}")
    if output:
        print(f"written to {output}")


def _show(args: argparse.Namespace) -> int:
    model = load_rtd_model(args.model)
    summary = {
        **_summary(model),
        "description": model.description,
        "created": model.created,
        "training": dict(model.training),
    }
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    print(f"{model.describe()}, created {model.created}")
    if model.description:
        print(f"  {model.description}")
    print(f"sha256 {model.sha256}")
    print(
        f"  {model.n_tanks} tanks in series, {model.volume_mL:.6g} mL, dead volume"
        f" {model.dead_volume_mL:.6g} mL; mean residence {model.mean_residence_mL:.6g} mL"
    )
    return 0


# --- patgw genealogy ----------------------------------------------------------------------------


def configure_genealogy(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``patgw genealogy CONFIG [--processor ID] [--format json|csv] [-o FILE]``."""
    parser.add_argument("config", type=Path, help="the gateway's configuration file")
    parser.add_argument("--processor", help="the rtd_trace processor (when there are several)")
    parser.add_argument("--format", choices=("json", "csv"), default="json", help="json (default)")
    parser.add_argument("--output", "-o", type=Path, help="write here instead of standard output")
    return _handler(_genealogy, "genealogy")


def _genealogy(args: argparse.Namespace) -> int:
    try:
        plan = gateway_load_plan(args.config, build_registry())
    except ConfigError as exc:
        raise _InputError(str(exc)) from None
    traced = [p for p in plan.processors if p.config.type == "rtd_trace"]
    if args.processor is not None:
        traced = [p for p in traced if p.config.id == args.processor]
    ids = [p.config.id for p in plan.processors if p.config.type == "rtd_trace"]
    if not traced:
        raise _InputError(
            f"{args.config}: no rtd_trace processor"
            + (f" {args.processor!r}" if args.processor else "")
            + (f" (rtd_trace processors: {', '.join(ids)})" if ids else "")
        )
    if len(traced) > 1:
        raise _InputError(
            f"{args.config}: several rtd_trace processors; name one: --processor {' | '.join(ids)}"
        )
    chosen = traced[0]
    path = genealogy_path(plan.config.data_dir, chosen.config.id)
    if not path.exists():
        raise _InputError(f"no genealogy yet at {path} (no eluate fraction traced)")
    genealogy = read_genealogy(path)
    processor = chosen.processor
    summary = list(processor.options.summary) if isinstance(processor, TraceProcessor) else []
    if args.format == "json":
        text = (
            json.dumps(
                {"processor": chosen.config.id, "source": str(path), **genealogy.as_json()},
                indent=2,
                ensure_ascii=False,
            )
            + "\n"
        )
    else:
        text = export_csv(genealogy.fractions, summary)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    if genealogy.skipped:
        print(f"patgw genealogy: {genealogy.skipped} unreadable line(s) skipped", file=sys.stderr)
    return 0
