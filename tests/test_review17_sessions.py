"""Review of issue 17 (hostile reviewer): the console's sessions and its query numbers.

Each test shows one defect found in review; they fail on the code as merged."""

from __future__ import annotations

import pytest
from test_console import Console, console  # noqa: F401  (the fixture)
from test_controlled_writes import PASSWORDS

from gateway.console.sessions import MAX_SESSIONS

SPEED = "reactor1/pump/speed"


@pytest.mark.asyncio
async def test_a_viewer_logging_in_again_and_again_does_not_end_the_engineers_session(
    console: Console,  # noqa: F811
) -> None:
    """Sessions are capped at MAX_SESSIONS for everyone together, the least recently used
    evicted: one viewer (or a script with a viewer's password) logging in 256 times logs out
    every other user, an engineer in the middle of a signed write included, unaudited."""
    engineer, _ = await console.login("engineer")
    for _ in range(MAX_SESSIONS):
        answer = await console.request(
            "POST", "/login", form={"user": "viewer", "password": PASSWORDS["viewer"]}
        )
        assert answer.status == 303, answer.body
    page = await console.request("GET", "/configuration", cookie=engineer)
    assert page.status == 200, page.headers  # 303 to /login: the engineer was logged out


@pytest.mark.asyncio
async def test_a_zoom_beyond_the_year_2262_is_a_bad_request_not_an_internal_error(
    console: Console,  # noqa: F811
) -> None:
    """start/end (ms) are not bounded: a short window past 2262 (nanoseconds beyond int64)
    reaches SQLite as an integer it cannot bind; the OverflowError is no StoreError, so the
    answer is 500 and a traceback is logged at ERROR for every such request."""
    cookie, _ = await console.login("viewer")
    start = 10**14  # ms: the year 5138
    answer = await console.request(
        "GET", f"/trends/data?signal={SPEED}&start={start}&end={start + 1}", cookie=cookie
    )
    assert answer.status == 400, answer.body
