"""SIGTERM under overload (issue 16, scope 5): a real ``patgw run`` stops within the stated bound
and accounts for every sample a driver published.

The overload: 20 Modbus instruments of 100 registers each, polled every 100 ms (20,000
values/s), from a register bank in a process of its own (``tests/register_bank.py``); the
``mqtt`` sink publishes one message per value to a real Mosquitto, which is then frozen
(SIGSTOP): the broker never acknowledges again, so the sink is behind for good, its forwards
hang and the backlog grows. Before the stop was bounded, the sinks alone were given
``send_timeout_s`` (10 s) to drain after the drivers' 10 s.

The bound is a requirement, so the test waits for the exit with a functional timeout of twice
``STOP_BOUND_S`` (a loaded machine may be slower than the bound; a regression to the old
behaviour is not), then checks the log (no ``gateway.stop_timeout``, ``gateway.stopped``
reached) and the store: for every signal, the seq numbers committed and those recorded as lost
are exactly ``0 .. next_seq - 1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, wait_for, write_config

from gateway.runtime.supervisor import STOP_BOUND_S

INSTRUMENTS = 20
REGISTERS = 100


def committed(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT count(*) FROM sample").fetchone()[0])
    except sqlite3.Error:
        return 0


def unaccounted(store: Path) -> dict[str, Any]:
    """Per signal, what is wrong with (committed seqs + recorded losses) vs 0..next_seq-1."""
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        seqs: dict[str, list[int]] = {}
        for name, seq in db.execute(
            "SELECT d.name, s.seq FROM sample s JOIN signal_def d ON d.id = s.def_id"
        ):
            seqs.setdefault(name, []).append(seq)
        for name, first, last in db.execute("SELECT signal, first_seq, last_seq FROM loss"):
            seqs.setdefault(name, []).extend(range(first, last + 1))
        problems = {}
        for name, next_seq in db.execute("SELECT name, next_seq FROM signal"):
            got = sorted(seqs.get(name, []))
            if got != list(range(next_seq)):
                problems[name] = {"next_seq": next_seq, "accounted": len(got)}
    return problems


@pytest.mark.asyncio
async def test_sigterm_under_overload_stops_within_the_bound(
    tmp_path: Path, mosquitto: Any
) -> None:
    bank = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "tests" / "register_bank.py"), stdout=subprocess.PIPE
    )
    gateway: asyncio.subprocess.Process | None = None
    log = tmp_path / "gateway.log"
    store = tmp_path / "store.sqlite"
    try:
        assert bank.stdout is not None
        port = int(await bank.stdout.readline())
        registers = [{"name": f"r{i}", "address": i} for i in range(REGISTERS)]
        config = write_config(
            tmp_path / "overload.yaml",
            {
                "version": 1,
                "site": "test",
                "area": "load",
                "data_dir": str(tmp_path / "data"),
                "store": {"path": str(store)},
                "instruments": [
                    {
                        "id": f"bank{k}",
                        "driver": "modbus",
                        "poll_interval_s": 0.1,
                        "options": {"port": port, "registers": registers},
                    }
                    for k in range(INSTRUMENTS)
                ],
                "sinks": [
                    {
                        "id": "mqtt",
                        "type": "mqtt",
                        "options": {"url": mosquitto.url, "payload": "sample"},
                    }
                ],
            },
        )
        with log.open("wb") as out:
            gateway = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "gateway", "run", str(config), "--no-view"),
                *("--log-format", "json"),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        running = gateway
        await wait_for(
            lambda: '"sink.up"' in log.read_text() or running.returncode is not None,
            within=60,
            what="the sink up",
        )
        assert gateway.returncode is None, log.read_text()[-3000:]
        mosquitto.pause()  # from now on the broker acknowledges nothing
        loaded = committed(store) + 2 * INSTRUMENTS * REGISTERS * 10  # 2 s of polls more
        await wait_for(lambda: committed(store) >= loaded, within=60, what="the backlog grows")
        began = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(gateway.wait(), 2 * STOP_BOUND_S)
        except TimeoutError:
            pytest.fail(
                f"no exit {2 * STOP_BOUND_S} s after SIGTERM (bound {STOP_BOUND_S} s):"
                f" {log.read_text()[-3000:]}"
            )
        took = time.monotonic() - began
    finally:
        mosquitto.resume()
        for process in (gateway, bank):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
    text = log.read_text()
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    names = {e.get("event") for e in events}
    assert code == 0, text[-3000:]
    assert "gateway.stop_timeout" not in names
    stopped = next(e for e in events if e.get("event") == "gateway.stopped")
    assert stopped["committed"] > 0
    assert unaccounted(store) == {}, f"exit after {took:.1f} s; {stopped}"
