"""Review of issue 17 (hostile reviewer): trend reads and the trends file under attack.

Each test shows one defect found in review; they fail on the code as merged."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
from conftest import wait_for
from test_console import Console, console  # noqa: F401  (the fixture)

from gateway.console import trendpage
from gateway.store.trends import trends_path

SPEED = "reactor1/pump/speed"


async def _until(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Poll an async ``condition`` every 0.2 s; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.2)


def _rolled(bench: Console) -> bool:
    keeper = bench.gateway.trends
    assert keeper is not None, "store.trends is on in the console's configuration"
    return keeper.stats.rolled_id > 0


async def _points(bench: Console, cookie: str) -> bool:
    answer = await bench.request("GET", f"/trends/data?signal={SPEED}&window=60", cookie=cookie)
    return answer.status == 200


@pytest.mark.asyncio
async def test_a_zoom_back_to_1970_is_answered_not_scanned_bucket_by_bucket(
    console: Console,  # noqa: F811
) -> None:
    """A zoom (start/end in ms) has no bound on its span, unlike ``window`` (7 days): from the
    epoch to now the reader walks ~30 million 60 s buckets in a recursive CTE (about 30 s of a
    core, minutes for a negative start), holding one of the two trend-read slots and the
    connection, and a disconnecting client does not stop it. Any viewer can stall every trend
    chart. It must be answered (refused, or read at a bounded cost) like any other request,
    within the test client's 10 s."""
    cookie, _ = await console.login("viewer")
    await wait_for(lambda: _rolled(console), what="a roll-up")
    now_ms = int(time.time() * 1000)
    answer = await console.request(
        "GET", f"/trends/data?signal={SPEED}&start=0&end={now_ms}", cookie=cookie
    )
    assert answer.status in (200, 400), answer.body


@pytest.mark.asyncio
async def test_a_trends_file_removed_while_running_is_made_again(
    console: Console,  # noqa: F811
) -> None:
    """The module says the rollups are derived data, rebuilt when the file is deleted; but the
    roller keeps its connection to the unlinked file for the whole run: the console answers
    503 "no trends file yet" until the gateway restarts, while /health says trends are fine."""
    cookie, _ = await console.login("viewer")
    await wait_for(lambda: _rolled(console), what="a roll-up")
    path = trends_path(console.plan.config.store.path)
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)

    async def rebuilt() -> bool:
        return path.exists() and await _points(console, cookie)

    await _until(rebuilt, 15, what="the trends file made again")


@pytest.mark.asyncio
async def test_a_trends_file_replaced_by_garbage_is_rebuilt_or_reported(
    console: Console,  # noqa: F811
) -> None:
    """A trends file damaged while running (here: replaced by garbage) leaves the console's
    trends at 503 for good, and /health's ``store.trends.failing`` stays null: the roller writes
    on to the old inode and nothing tells the operator. Either rebuild it, or report it."""
    cookie, _ = await console.login("viewer")
    await wait_for(lambda: _rolled(console), what="a roll-up")
    path = trends_path(console.plan.config.store.path)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    path.unlink()
    path.write_bytes(b"not a database " * 1000)

    async def healed_or_reported() -> bool:
        if await _points(console, cookie):
            return True
        health = await console.request("GET", "/health")
        return health.json()["store"]["trends"]["failing"] is not None

    await _until(healed_or_reported, 15, what="trends rebuilt, or their failure on /health")


@pytest.mark.asyncio
async def test_trend_json_is_built_off_the_event_loop(
    console: Console,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store read runs on a worker thread, but the answer (``trend_json`` and its
    ``json.dumps``) is built on the event loop, where ingestion runs: 8 signals of 2,000 points
    (the most one request may ask for) take ~80 ms here, so 20 charts refreshing block the loop
    for over a second. The spectra page encodes on its worker thread for this reason."""
    cookie, _ = await console.login("viewer")
    await wait_for(lambda: _rolled(console), what="a roll-up")
    loop_thread = threading.get_ident()
    built_on: list[int] = []
    original = trendpage.trend_json

    def spy(*args: object, **kwargs: object) -> object:
        built_on.append(threading.get_ident())
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trendpage, "trend_json", spy)
    answer = await console.request("GET", f"/trends/data?signal={SPEED}&window=60", cookie=cookie)
    assert answer.status == 200, answer.body
    assert built_on and loop_thread not in built_on
