"""CPU time to encode Sparkplug B DDATA payloads: µs per metric, for the ``sparkplug`` sink.

Builds one DDATA per device from batches of scalar samples (one device, ``--metrics`` samples
per message, as one forward() of the sink gets them) and prints JSON: the protobuf backend,
µs of CPU time per metric and per message, and bytes per metric. CPU time
(``time.process_time``), not wall time: the figure holds on a shared machine.

    .venv/bin/python benchmarks/sparkplug_encode.py [--metrics 100] [--messages 2000]
"""

from __future__ import annotations

import argparse
import json
import time

from google.protobuf.internal import api_implementation

from gateway import Quality, Sample, Signal
from plugins.sparkplug.payloads import Catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", type=int, default=100, help="samples per DDATA message")
    parser.add_argument("--messages", type=int, default=2000, help="messages to encode")
    parser.add_argument("--signals", type=int, default=100, help="signals of the device")
    parser.add_argument("--bad-every", type=int, default=0, help="every Nth sample bad (0: none)")
    args = parser.parse_args()
    signals = [Signal(f"area/dev/s{i}", "mL/min") for i in range(args.signals)]
    catalog = Catalog()
    catalog.bind(signals)
    base = time.time_ns()
    batch = []
    for i in range(args.metrics):
        bad = args.bad_every and i % args.bad_every == 0
        batch.append(
            Sample(
                signals[i % args.signals].id,
                i * 0.1 + 1.6,
                "mL/min",
                base + i * 1_000_000,
                base + i * 1_000_000 + 5,
                Quality.BAD if bad else Quality.GOOD,
                i,
                "timeout" if bad else None,
            )
        )
    size = 0
    now_ms = base // 1_000_000
    catalog.ddata(batch, False, now_ms, [])  # warm up
    start = time.process_time()
    for _ in range(args.messages):
        owners: list[list[int]] = []
        for _, payload in catalog.ddata(batch, False, now_ms, owners):
            size = len(payload)
    cpu = time.process_time() - start
    metrics = args.messages * args.metrics
    print(
        json.dumps(
            {
                "benchmark": "sparkplug_ddata_encode",
                "protobuf_backend": api_implementation.Type(),
                "metrics_per_message": args.metrics,
                "messages": args.messages,
                "cpu_us_per_metric": round(cpu / metrics * 1e6, 3),
                "cpu_us_per_message": round(cpu / args.messages * 1e6, 1),
                "bytes_per_metric": round(size / args.metrics, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
