"""What the console's spectra page costs the store: the newest N spectra of one signal, read
back by walking the sample table's primary key from the newest id (it has no index by signal).

Builds a store of ``--rows`` samples (default 500,000, the console's ``SCAN_ROWS``): scalar
samples of ``--signals`` signals, with a 2032-point spectrum every ``--every`` rows (default
2,000: a spectrometer every 2 s beside 1,000 signals at 1 Hz), then times, on a read-only
connection as the console opens one per request, median of ``--repeat`` runs:

* ``newest_5_ms`` / ``newest_20_ms``: the newest 5 / 20 spectra (the walk stops at the N-th);
* ``absent_ms``: a signal with no sample in the window: the whole bounded walk, the worst case;
* ``open_ms``: opening and closing the read-only connection.

    python benchmarks/console_spectra.py --rows 500000

Prints JSON. Not a test: figures depend on the machine (see ``machine``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gateway.console.spectra import SCAN_ROWS
from gateway.model import Quality, Signal, SignalKind
from gateway.spectra import SpectralAxis, Spectrum
from gateway.store.sqlite import SampleStore


def _fill(path: Path, rows: int, signals: int, every: int) -> None:
    store = SampleStore(path)
    try:
        scalars = [Signal(f"b/dev/s{i}", "1") for i in range(signals)]
        spectrum = Signal("b/raman/spectrum", "{counts}", SignalKind.SPECTRUM)
        absent = Signal("b/raman/absent", "{counts}", SignalKind.SPECTRUM)
        defs = store.define([*scalars, spectrum, absent])
        axis = SpectralAxis(np.linspace(84.0, 2055.0, 2032), "cm-1")
        rng = np.random.default_rng(1)
        good = int(Quality.GOOD)
        seqs: dict[str, int] = {}
        batch: list[tuple[int, int, int, int, int, Any, str | None]] = []
        for i in range(rows):
            if i % every == every - 1:
                signal = spectrum
                value: Any = Spectrum(rng.normal(700, 50, 2032), axis)
            else:
                signal = scalars[i % signals]
                value = float(i)
            seq = seqs.get(signal.id, 0)
            seqs[signal.id] = seq + 1
            batch.append((defs[signal.id].def_id, seq, i, i, good, value, None))
            if len(batch) == 10_000:
                store.commit(batch, dict(seqs))
                batch = []
        if batch:
            store.commit(batch, dict(seqs))
    finally:
        store.close()


def _median_ms(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=SCAN_ROWS)
    parser.add_argument("--signals", type=int, default=1000)
    parser.add_argument("--every", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.sqlite"
        started = time.perf_counter()
        _fill(path, args.rows, args.signals, args.every)
        fill_s = time.perf_counter() - started

        def read(signal: str, count: int) -> Callable[[], object]:
            def run() -> object:
                store = SampleStore(path, read_only=True)
                try:
                    samples, _ = store.newest(signal, count, scan_rows=SCAN_ROWS)
                finally:
                    store.close()
                assert signal.endswith("absent") or len(samples) == count
                return samples

            return run

        def open_close() -> None:
            SampleStore(path, read_only=True).close()

        figures = {
            "rows": args.rows,
            "scan_rows": SCAN_ROWS,
            "spectrum_every_rows": args.every,
            "store_mb": round(path.stat().st_size / 1e6, 1),
            "fill_s": round(fill_s, 1),
            "open_ms": _median_ms(open_close, args.repeat),
            "newest_5_ms": _median_ms(read("b/raman/spectrum", 5), args.repeat),
            "newest_20_ms": _median_ms(read("b/raman/spectrum", 20), args.repeat),
            "absent_ms": _median_ms(read("b/raman/absent", 5), args.repeat),
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
            },
        }
    json.dump(figures, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
