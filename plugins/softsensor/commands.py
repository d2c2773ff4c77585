"""The ``pls`` kind of ``patgw model``: fit a soft-sensor model from exported spectra and
laboratory references, check it against new data, and show what a model file holds.

::

    patgw model fit --spectra export.jsonl --reference lab.csv --output glucose.json \\
        --id reactor1-glucose --model-version 1
    patgw model check glucose.json --data later.jsonl --reference later.csv
    patgw model show glucose.json

Exit codes: 0 success; 2 a usage or input error (missing file, malformed CSV or export, a
model file that fails its checks, spectra on another axis), one line per problem on standard
error, as the rest of ``patgw`` does. ``--json`` prints the report as JSON on standard output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway import UnitError, compile_conversion, format_ns

from .data import DataError, Matched, SpectraSet, match, read_references_csv, read_spectra_jsonl
from .model import ModelFileError, PlsModel, load_model, save_model
from .preprocess import Pipeline

__all__ = ["configure_check", "configure_fit", "configure_show"]

Array = NDArray[np.float64]


class _InputError(Exception):
    """A problem with what the user gave; its message is the one line to print."""


def configure_fit(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``patgw model fit [pls]``: add the fit's arguments to ``parser``; return its handler
    (``patgw model`` adds ``--config``/``--user``/``--reason`` and the audit record)."""
    _configure_fit(parser)
    return _handler(_fit)


def configure_check(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``patgw model check MODEL.json ...`` (``parser`` has the file argument, ``model``)."""
    _configure_check(parser)
    return _handler(_check)


def configure_show(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``patgw model show MODEL.json [--json]``."""
    parser.add_argument("--json", action="store_true", help="print JSON")
    return _handler(_show)


def _configure_fit(fit: argparse.ArgumentParser) -> None:
    fit.add_argument("--spectra", type=Path, required=True, help="'patgw export' JSONL file")
    fit.add_argument("--signal", metavar="GLOB", help="the spectrum signal (shell wildcards)")
    fit.add_argument("--reference", type=Path, required=True, help="reference values, CSV")
    fit.add_argument("--output", "-o", type=Path, required=True, help="model file to write")
    fit.add_argument("--id", dest="model_id", required=True, help="model id")
    fit.add_argument("--model-version", required=True, help="model version")
    fit.add_argument("--description", default="", help="what the model is for")
    fit.add_argument(
        "--preprocess",
        metavar="JSON|@FILE",
        help="preprocessing steps as a JSON list (or @file.json); default: crop 400-1800,"
        " baseline 2, savgol 15/2, normalize 1580-1700 (mean_center is appended)",
    )
    size = fit.add_mutually_exclusive_group()
    size.add_argument("--components", type=int, metavar="N", help="force N components")
    size.add_argument(
        "--max-components", type=int, default=15, metavar="N", help="most to try (15)"
    )
    fit.add_argument("--folds", type=int, default=5, help="CV folds without batches (5)")
    _matching_options(fit)
    fit.add_argument("--confidence", type=float, default=0.99, help="limits' level (0.99)")
    fit.add_argument("--json", action="store_true", help="print the report as JSON")


def _configure_check(check: argparse.ArgumentParser) -> None:
    check.add_argument("--data", type=Path, required=True, help="'patgw export' JSONL file")
    check.add_argument("--reference", type=Path, required=True, help="reference values, CSV")
    check.add_argument("--signal", metavar="GLOB", help="the spectrum signal (shell wildcards)")
    _matching_options(check)
    check.add_argument("--json", action="store_true", help="print JSON")


def _matching_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-gap-s",
        type=float,
        default=60.0,
        metavar="S",
        help="a reference matches the nearest spectrum at most S seconds away (60)",
    )


def _handler(
    command: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (_InputError, DataError, ModelFileError, UnitError, ValueError, OSError) as exc:
            # Input problems, never a traceback: one line, as the rest of patgw reports them.
            message = " ".join(str(exc).split()) or type(exc).__name__
            print(f"patgw model {args.model_command}: {message}", file=sys.stderr)
            return 2

    return handle


# --- fit ---------------------------------------------------------------------------------------


def _fit(args: argparse.Namespace) -> int:
    from .fit import DEFAULT_PREPROCESSING, fit_model  # scikit-learn: only when fitting

    # What needs no data is checked before the data are read and the model fitted.
    for option, text in (("--id", args.model_id), ("--model-version", args.model_version)):
        if not text.strip():
            raise _InputError(f"{option}: must not be empty (a model file needs it)")
    preprocessing = (
        DEFAULT_PREPROCESSING if args.preprocess is None else _preprocessing(args.preprocess)
    )
    if not args.output.parent.is_dir():
        raise _InputError(f"--output: the folder {args.output.parent} does not exist")
    spectra = read_spectra_jsonl(args.spectra, args.signal)
    refs = read_references_csv(args.reference)
    matched = _matched(spectra, refs.times, match(spectra, refs, args.max_gap_s), args)
    model, report = fit_model(
        matched.x,
        spectra.axis,
        matched.y,
        refs.targets,
        preprocessing=preprocessing,
        groups=matched.groups,
        folds=args.folds,
        components=args.components,
        max_components=args.max_components,
        confidence=args.confidence,
        model_id=args.model_id,
        version=args.model_version,
        description=args.description,
        spectrum_unit=spectra.unit,
        training=_sources(args, spectra, len(refs.times), matched),
    )
    save_model(model, args.output)
    summary = {
        "spectra": _spectra_summary(spectra),
        "references": {"rows": len(refs.times), "matched": len(matched.y)}
        | {"unmatched": matched.unmatched, "max_gap_s": args.max_gap_s},
        **report.to_dict(),
        "model": {"id": model.id, "version": model.version, "sha256": model.sha256},
        "output": str(args.output),
    }
    if args.json:
        print(json.dumps(_json_safe(summary), indent=2, ensure_ascii=False))
    else:
        _print_fit(summary, model)
    return 0


def _preprocessing(text: str) -> list[Mapping[str, Any]]:
    """``--preprocess``: a JSON list of step objects, inline or ``@file``."""
    source = "--preprocess"
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise _InputError(f"--preprocess: cannot read {source} ({exc.strerror})") from None
    try:
        steps = json.loads(text)
    except ValueError as exc:
        raise _InputError(f"{source}: not JSON ({exc})") from None
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise _InputError(f'{source}: expected a JSON list of steps like {{"step": "snv"}}')
    try:
        Pipeline.from_dicts(steps)
    except (TypeError, ValueError) as exc:
        raise _InputError(f"{source}: {exc}") from None
    return steps


def _matched(
    spectra: SpectraSet, ref_times: NDArray[np.int64], matched: Matched, args: argparse.Namespace
) -> Matched:
    if len(matched.y):
        return matched
    raise _InputError(
        f"no reference lies within {args.max_gap_s:g} s of a spectrum: references"
        f" {_span(ref_times)}, spectra {_span(spectra.source_ts)} (see --max-gap-s)"
    )


def _span(times: NDArray[np.int64]) -> str:
    if not len(times):
        return "none"
    return f"{format_ns(int(times.min()))} to {format_ns(int(times.max()))}"


def _sources(
    args: argparse.Namespace, spectra: SpectraSet, rows: int, matched: Matched
) -> dict[str, Any]:
    """What the model file records about the data it was fitted on."""
    return {
        "spectra": {
            "file": str(args.spectra),
            "sha256": _file_sha256(args.spectra),
            **_spectra_summary(spectra),
        },
        "reference": {
            "file": str(args.reference),
            "sha256": _file_sha256(args.reference),
            "rows": rows,
            "matched": len(matched.y),
            "unmatched": matched.unmatched,
            "max_gap_s": args.max_gap_s,
        },
        "time_range": [
            format_ns(int(matched.source_ts.min())),
            format_ns(int(matched.source_ts.max())),
        ],
        "batches": None if matched.groups is None else sorted(set(matched.groups)),
    }


def _spectra_summary(spectra: SpectraSet) -> dict[str, Any]:
    values = spectra.axis.values
    return {
        "signal": spectra.signal,
        "unit": spectra.unit,
        "count": len(spectra.values),
        "axis": {
            "key": spectra.axis.key,
            "unit": spectra.axis.unit,
            "points": len(values),
            "range": [float(values.min()), float(values.max())],
        },
        "skipped": dict(spectra.skipped),
    }


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _print_fit(summary: Mapping[str, Any], model: PlsModel) -> None:
    spectra, refs = summary["spectra"], summary["references"]
    print(f"spectra: {spectra['count']} of {spectra['signal']}{_skipped(spectra['skipped'])}")
    print(
        f"references: {refs['rows']} rows, {refs['matched']} matched within"
        f" {refs['max_gap_s']:g} s, {refs['unmatched']} unmatched"
    )
    print(f"cross-validation: {summary['cv']}")
    for target, fitted in zip(summary["targets"], model.targets, strict=True):
        unit = target["unit"]
        print(
            f"\n{target['name']} [{unit}], n={target['n']}: {_components(target['components'])},"
            f" RMSEC {target['rmsec']:.4g}, R² {_num(target['r2'])}, R²cv {_num(target['r2cv'])}"
        )
        print("  components  RMSECV")
        for a, rmsecv in enumerate(target["rmsecv"], start=1):
            mark = "*" if a == target["components"] else " "
            print(f"  {mark} {a:>8}  {rmsecv:.4g}")
        print(
            f"  limits at {model.confidence:g}: T² {fitted.t2_limit:.4g}, Q {fitted.q_limit:.4g};"
            f" calibrated {fitted.calibration_range[0]:.4g}..{fitted.calibration_range[1]:.4g}"
            f" {unit}"
        )
    print(
        f"\nmodel {model.id} v{model.version} written to {summary['output']}"
        f" (sha256 {model.sha256[:16]})"
    )


def _skipped(skipped: Mapping[str, int]) -> str:
    if not skipped:
        return ""
    return "; skipped " + ", ".join(f"{count} {why}" for why, count in skipped.items())


def _components(count: int) -> str:
    return f"{count} component{'' if count == 1 else 's'}"


def _num(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


# --- check -------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    spectra = read_spectra_jsonl(args.data, args.signal)
    problem = model.axis_mismatch(spectra.axis)
    if problem is not None:
        raise _InputError(f"model {model.id} cannot read {args.data}: {problem}")
    if spectra.unit != model.spectrum_unit:
        raise _InputError(
            f"the spectra are in {spectra.unit!r}, model {model.id} was fitted on spectra in"
            f" {model.spectrum_unit!r}"
        )
    refs = read_references_csv(args.reference)
    columns = _reference_columns(model, refs.targets, args.reference)
    matched = _matched(spectra, refs.times, match(spectra, refs, args.max_gap_s), args)
    prediction = model.predict(matched.x)
    targets: dict[str, dict[str, Any]] = {}
    for k, target in enumerate(model.targets):
        if target.name not in columns:
            continue
        column, convert = columns[target.name]
        reference = convert(matched.y[:, column])
        measured = ~np.isnan(reference)
        targets[target.name] = _figures(
            prediction.values[measured, k],
            reference[measured],
            prediction.t2[measured, k] > target.t2_limit,
            prediction.q[measured, k] > target.q_limit,
        )
    result = {
        "model": {"id": model.id, "version": model.version, "sha256": model.sha256},
        "data": {"matched": len(matched.y), "unmatched": matched.unmatched}
        | {"signal": spectra.signal, "skipped": dict(spectra.skipped)},
        "targets": targets,
    }
    if args.json:
        print(json.dumps(_json_safe(result), indent=2, ensure_ascii=False))
    else:
        _print_check(result, model)
    return 0


def _reference_columns(
    model: PlsModel, targets: Sequence[tuple[str, str]], path: Path
) -> dict[str, tuple[int, Callable[[Array], Array]]]:
    """For each model target the reference file has: its column, and the conversion of its
    values to the model's unit (``g/L`` references for a ``mg/dL`` model, say)."""
    units = {t.name: t.unit for t in model.targets}
    columns: dict[str, tuple[int, Callable[[Array], Array]]] = {}
    for column, (name, unit) in enumerate(targets):
        if name not in units:
            continue
        try:
            conversion = compile_conversion(unit, units[name])
        except UnitError as exc:
            raise _InputError(f"{path}: column '{name} [{unit}]': {exc}") from None
        columns[name] = (column, _converter(conversion.scale, conversion.offset))
    if not columns:
        raise _InputError(
            f"{path}: no column for the model's targets ({', '.join(units)}); it has"
            f" {', '.join(name for name, _ in targets)}"
        )
    return columns


def _converter(scale: float, offset: float) -> Callable[[Array], Array]:
    def convert(values: Array) -> Array:
        return values * scale + offset

    return convert


def _figures(
    predicted: Array, reference: Array, t2_over: NDArray[np.bool_], q_over: NDArray[np.bool_]
) -> dict[str, Any]:
    """RMSEP, bias (mean of predicted - reference), SEP (their standard deviation, ddof 1) and
    R² of one target's predictions, and how many exceed the T² and Q limits."""
    n = len(reference)
    error = predicted - reference
    total = float(((reference - reference.mean()) ** 2).sum()) if n else 0.0
    return {
        "n": n,
        "rmsep": math.sqrt(float(np.mean(error**2))) if n else None,
        "bias": float(error.mean()) if n else None,
        "sep": float(error.std(ddof=1)) if n > 1 else None,
        "r2": 1.0 - float((error**2).sum()) / total if total > 0 else None,
        "t2_over_limit": int(t2_over.sum()),
        "q_over_limit": int(q_over.sum()),
    }


def _print_check(result: Mapping[str, Any], model: PlsModel) -> None:
    data = result["data"]
    print(
        f"model {model.id} v{model.version} (sha256 {model.sha256[:16]}) on {data['signal']}:"
        f" {data['matched']} references matched, {data['unmatched']} unmatched"
        f"{_skipped(data['skipped'])}"
    )
    header = ("target", "unit", "n", "RMSEP", "bias", "SEP", "R²", "T²>limit", "Q>limit")
    rows = [header]
    units = {t.name: t.unit for t in model.targets}
    for name, f in result["targets"].items():
        figures = (_fig(f["rmsep"]), _fig(f["bias"]), _fig(f["sep"]), _num(f["r2"]))
        counts = (str(f["t2_over_limit"]), str(f["q_over_limit"]))
        rows.append((name, units[name], str(f["n"]), *figures, *counts))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


def _fig(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


# --- show --------------------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    summary = _model_summary(model)
    if args.json:
        print(json.dumps(_json_safe(summary), indent=2, ensure_ascii=False))
        return 0
    axis = summary["axis"]
    print(f"model {model.id} v{model.version}, created {model.created}")
    if model.description:
        print(f"  {model.description}")
    print(f"sha256 {model.sha256}")
    print(
        f"axis: {axis['points']} points, {axis['min']:.6g}-{axis['max']:.6g} {axis['unit']}"
        f" (key {axis['key'][:12]}); spectra in {model.spectrum_unit}"
    )
    print("preprocessing: " + "; ".join(_step_text(step) for step in summary["preprocessing"]))
    print(f"limits at confidence {model.confidence:g}")
    for t in summary["targets"]:
        low, high = t["calibration_range"]
        rmsecv = "n/a" if t["rmsecv"] is None else f"{t['rmsecv']:.4g}"
        print(
            f"  {t['name']} [{t['unit']}]: {_components(t['components'])}, RMSECV {rmsecv},"
            f" calibrated {low:.4g}..{high:.4g}, T² limit {t['limits']['t2']:.4g},"
            f" Q limit {t['limits']['q']:.4g}"
        )
    return 0


def _model_summary(model: PlsModel) -> dict[str, Any]:
    """The model without its matrices: what ``show --json`` prints."""
    values = model.axis.values
    return {
        "id": model.id,
        "version": model.version,
        "description": model.description,
        "created": model.created,
        "sha256": model.sha256,
        "axis": {
            "unit": model.axis.unit,
            "points": len(values),
            "min": float(values.min()),
            "max": float(values.max()),
            "key": model.axis.key,
        },
        "spectrum_unit": model.spectrum_unit,
        "preprocessing": [_step_summary(step) for step in model.preprocessing.to_dicts()],
        "confidence": model.confidence,
        "targets": [
            {
                "name": t.name,
                "unit": t.unit,
                "components": t.components,
                "limits": {"t2": t.t2_limit, "q": t.q_limit},
                "calibration_range": list(t.calibration_range),
                "rmsecv": t.rmsecv,
            }
            for t in model.targets
        ],
        "training": dict(model.training),
    }


def _step_summary(step: Mapping[str, Any]) -> dict[str, Any]:
    """A step's parameters, with a fitted mean reduced to its length."""
    if step.get("mean") is not None:
        return {**step, "mean": f"{len(step['mean'])} points"}
    return dict(step)


def _step_text(step: Mapping[str, Any]) -> str:
    parameters = ", ".join(f"{k} {v}" for k, v in step.items() if k != "step")
    return f"{step['step']} ({parameters})" if parameters else str(step["step"])


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as ``null``: JSON has no word for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
