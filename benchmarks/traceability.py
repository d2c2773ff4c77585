"""The ``rtd_trace`` processor over 30 process days of the scripted perfusion line the tests use
(``tests/traceline.py``: 16 signals, a fraction every 2 process hours), fed in process, without
a gateway: the cost per sample, per model step, and the memory the processor holds over time
(it must stay flat: bins that left the line are dropped, old media entries merge).

Prints one JSON object: ``per_sample_us`` (mean wall time of ``process``), ``busy_per_step_us``,
and at each checkpoint (process days) the bins and media entries held, the traced-memory size
the process's resident memory (MiB) and the genealogy file's size.

    .venv/bin/python benchmarks/traceability.py [--days 30] [--every-h 0.01]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the scripted line is the tests' own

import traceline  # noqa: E402

from gateway import PluginContext, Quality, Sample, Signal  # noqa: E402
from plugins.traceability.options import TraceOptions  # noqa: E402
from plugins.traceability.processor import TraceProcessor  # noqa: E402
from plugins.traceability.rtd import RtdModel, save_rtd_model  # noqa: E402

HOUR_NS = 3_600_000_000_000


class _Out:
    def publish(self, *args: Any, **kwargs: Any) -> None:
        pass


class _IO:
    processor_id = "trace"
    _out = _Out()

    def output(self, channel: str) -> _Out:
        return self._out

    def process_time_h(self, ts_ns: int) -> float:
        return ts_ns / HOUR_NS

    def note(self, *args: Any, **kwargs: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--every-h", type=float, default=0.01, help="sample period, process h")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "surge.json"
        save_rtd_model(RtdModel("surge", "1", "surge_tank", **traceline.SURGE), model)  # type: ignore[arg-type]
        options = TraceOptions.model_validate(traceline.options(str(model)))
        processor = TraceProcessor(options, PluginContext("trace", Path(folder) / "data"))
        processor.bind(
            {
                name: Signal(f"a/{name}", traceline.SIGNALS[name.split("/")[1]])
                for name in processor.inputs()
            }
        )
        io = _IO()
        names = list(traceline.SIGNALS)
        checkpoints: list[dict[str, Any]] = []
        marks = {round(d * 24 / args.every_h) for d in (1, 3, 10, 20, args.days)}
        steps_before = 0
        busy = 0.0
        samples = 0
        total = round(args.days * 24 / args.every_h)
        for k in range(total + 1):
            t = k * args.every_h
            ts = round(t * HOUR_NS)
            values = traceline.values_at(t)
            batch = [
                Sample(f"a/line/{n}", values[n], traceline.SIGNALS[n], ts, ts, Quality.GOOD, k)
                for n in names
            ]
            start = time.perf_counter()
            for sample in batch:
                processor.process(sample, io)  # type: ignore[arg-type]
            busy += time.perf_counter() - start
            samples += len(batch)
            if k in marks:
                rss_pages = int(Path("/proc/self/statm").read_text().split()[1])
                checkpoints.append(
                    {
                        "day": round(t / 24, 2),
                        "bins": len(processor._bins),
                        "media_entries": len(processor._reactor.entries),
                        "rss_MiB": round(rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1),
                        "fractions": processor.counts["fractions"],
                        "genealogy_KiB": round(processor.path.stat().st_size / 1024),
                    }
                )
        steps = processor.counts["steps"] - steps_before
        print(
            json.dumps(
                {
                    "process_days": args.days,
                    "samples": samples,
                    "steps": steps,
                    "per_sample_us": round(busy / samples * 1e6, 2),
                    "busy_per_step_us": round(busy / max(steps, 1) * 1e6, 1),
                    "checkpoints": checkpoints,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
