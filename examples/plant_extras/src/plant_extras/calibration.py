"""The ``linear`` model kind of ``patgw model``: a two-point calibration ``y = slope * x +
offset`` in a JSON file, fitted from two reference points, shown, and checked against more.

    patgw model fit linear --point 4=0 --point 20=100 --output level.json
    patgw model show level.json
    patgw model check level.json --point 12=50 --tolerance 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

KIND = "linear"
#: What each of fit, show and check returns: runs the parsed arguments, returns the exit code.
Handler = Callable[[argparse.Namespace], int]


def _point(text: str) -> tuple[float, float]:
    raw, sep, true = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: write RAW=TRUE, e.g. 4=0")
    return float(raw), float(true)


def fit_calibration(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument("--point", type=_point, action="append", required=True, help="RAW=TRUE")
    parser.add_argument("--output", type=Path, required=True, help="the model file to write")

    def fit(args: argparse.Namespace) -> int:
        if len(args.point) != 2 or args.point[0][0] == args.point[1][0]:
            print("patgw model fit linear: give two --point with different RAW", file=sys.stderr)
            return 2
        (x0, y0), (x1, y1) = args.point
        slope = (y1 - y0) / (x1 - x0)
        model = {"kind": KIND, "slope": slope, "offset": y0 - slope * x0}
        args.output.write_text(json.dumps(model, indent=2) + "\n", encoding="utf-8")
        print(f"{args.output}: y = {slope:g} * x + {model['offset']:g}")
        return 0

    return fit


def show_calibration(parser: argparse.ArgumentParser) -> Handler:
    def show(args: argparse.Namespace) -> int:
        model = _read(args.model)
        if model is None:
            return 2
        print(f"{args.model}: linear, y = {model['slope']:g} * x + {model['offset']:g}")
        return 0

    return show


def check_calibration(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument("--point", type=_point, action="append", required=True, help="RAW=TRUE")
    parser.add_argument("--tolerance", type=float, default=0.0, help="largest error accepted")

    def check(args: argparse.Namespace) -> int:
        model = _read(args.model)
        if model is None:
            return 2
        worst = max(abs(model["slope"] * x + model["offset"] - y) for x, y in args.point)
        print(f"{args.model}: largest error {worst:g} over {len(args.point)} points")
        return 0 if worst <= args.tolerance else 2

    return check


def _read(path: Path) -> dict[str, Any] | None:
    """The model in ``path``, or ``None`` after saying on standard error why it is unusable."""
    try:
        model = json.loads(path.read_text(encoding="utf-8"))
        float(model["slope"]), float(model["offset"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"patgw model: {path}: not a linear model ({exc})", file=sys.stderr)
        return None
    return dict(model)
