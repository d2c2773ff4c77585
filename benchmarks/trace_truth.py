"""A trace's genealogy against the capture skid's truth file, fraction by fraction.

For each eluate fraction in both files: the deviation's share (the truth's deviation mass over
its mass; the genealogy's ``deviations[NAME]``, which includes the deviation's ``padding_h``
before and after: configure ``padding_h: 0`` to compare like with like) and each media lot's
share. The trace calls what the bioreactor held before tracing started ``unknown``; the skid
knows it as the initial fill's lot (``--initial-lot``, 1 in the emulator), so that lot is
compared with the trace's lot plus its ``unknown``. Prints JSON: the rows and the largest
absolute errors, over all fractions and over the complete ones (columns loaded while traced)::

    .venv/bin/python benchmarks/trace_truth.py \\
        --genealogy data/continuous/traceability/trace.genealogy.jsonl \\
        --truth data/continuous/capture-truth.jsonl [--summary]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare(
    genealogy: list[dict[str, Any]],
    truth: list[dict[str, Any]],
    deviation: str | None = None,
    initial_lot: str = "1",
) -> dict[str, Any]:
    """The rows and error summary (see the module docstring)."""
    traced = {int(r["fraction"]): r for r in genealogy if r.get("type") == "fraction"}
    rows: list[dict[str, Any]] = []
    for t in truth:
        number = int(t["fraction"])
        r = traced.get(number)
        mass = float(t["mass_g"])
        if r is None or mass <= 0:
            continue
        names = list(r["deviations"])
        name = deviation if deviation is not None else (names[0] if len(names) == 1 else None)
        if name is None:
            raise SystemExit(f"the genealogy traces deviations {names}: name one (--deviation)")
        lots_true = {str(lot): g / mass for lot, g in t["lots"].items()}
        lots_traced = {str(lot): float(s) for lot, s in r["lots"].items()}
        unknown = lots_traced.pop("unknown", 0.0)
        lots_traced[initial_lot] = lots_traced.get(initial_lot, 0.0) + unknown
        lot_errors = {
            lot: abs(lots_traced.get(lot, 0.0) - lots_true.get(lot, 0.0))
            for lot in sorted(set(lots_true) | set(lots_traced))
        }
        true_share = float(t["deviation_mass_g"]) / mass
        traced_share = float(r["deviations"].get(name, 0.0))
        rows.append(
            {
                "fraction": number,
                "column": t["column"],
                "complete": bool(r["complete"]),
                "deviation_true": round(true_share, 5),
                "deviation_traced": round(traced_share, 5),
                "deviation_error": round(abs(traced_share - true_share), 5),
                "lots_true": {lot: round(s, 5) for lot, s in lots_true.items()},
                "lots_traced": {lot: round(s, 5) for lot, s in lots_traced.items()},
                "lot_error": round(max(lot_errors.values(), default=0.0), 5),
                "unknown_in_line": round(float(r.get("unknown_share") or 0.0), 5),
            }
        )

    def worst(key: str, complete_only: bool) -> float | None:
        values = [row[key] for row in rows if row["complete"] or not complete_only]
        return max(values) if values else None

    deviated = [row for row in rows if row["deviation_true"] > 0 or row["deviation_traced"] > 0]
    return {
        "fractions_compared": len(rows),
        "fractions_only_in_truth": sorted({int(t["fraction"]) for t in truth} - set(traced)),
        "deviation_share_max_abs_error": worst("deviation_error", False),
        "deviation_share_max_abs_error_complete": worst("deviation_error", True),
        "lot_share_max_abs_error": worst("lot_error", False),
        "lot_share_max_abs_error_complete": worst("lot_error", True),
        "deviation_split": {
            "true": [row["deviation_true"] for row in deviated],
            "traced": [row["deviation_traced"] for row in deviated],
            "fractions": [row["fraction"] for row in deviated],
        },
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genealogy", type=Path, required=True, help="<id>.genealogy.jsonl")
    parser.add_argument("--truth", type=Path, required=True, help="the skid's truth_file")
    parser.add_argument("--deviation", help="the genealogy's deviation to compare (if several)")
    parser.add_argument("--initial-lot", default="1", help="lot of the reactor's initial fill")
    parser.add_argument("--summary", action="store_true", help="without the per-fraction rows")
    args = parser.parse_args()
    result = compare(_jsonl(args.genealogy), _jsonl(args.truth), args.deviation, args.initial_lot)
    if args.summary:
        result.pop("rows")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
