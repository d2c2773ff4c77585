"""Review of issue 17 (hostile reviewer): the console's sessions and its query numbers.

Each test shows one defect found in review; they fail on the code as merged."""

from __future__ import annotations

import pytest
from test_console import Console, console  # noqa: F401  (the fixture)
from test_controlled_writes import PASSWORDS

from gateway.console.sessions import MAX_SESSIONS, MAX_SESSIONS_PER_USER, Sessions
from gateway.security import Identity, Permission

SPEED = "reactor1/pump/speed"


@pytest.mark.asyncio
async def test_a_viewer_logging_in_again_and_again_does_not_end_the_engineers_session(
    console: Console,  # noqa: F811
) -> None:
    """Sessions were capped at MAX_SESSIONS for everyone together, the least recently used
    evicted: one viewer (or a script with a viewer's password) logging in 256 times logged out
    every other user, an engineer in the middle of a signed write included, unaudited. Now a
    user's own oldest session makes room for that user's new one."""
    engineer, _ = await console.login("engineer")
    viewers = []
    for _ in range(MAX_SESSIONS_PER_USER + 1):
        answer = await console.request(
            "POST", "/login", form={"user": "viewer", "password": PASSWORDS["viewer"]}
        )
        assert answer.status == 303, answer.body
        viewers.append(answer.headers["set-cookie"].split(";")[0].partition("=")[2])
    page = await console.request("GET", "/configuration", cookie=engineer)
    assert page.status == 200, page.headers  # 303 to /login: the engineer was logged out
    first = await console.request("GET", "/", cookie=viewers[0])
    assert first.status == 303  # the viewer's own oldest session made room
    assert (await console.request("GET", "/", cookie=viewers[-1])).status == 200


def test_when_every_session_is_taken_the_busiest_user_makes_room() -> None:
    now = [0.0]
    sessions = Sessions(900, clock=lambda: now[0])

    def who(name: str) -> Identity:
        return Identity(name, name, frozenset({"viewer"}), frozenset({Permission.READ}))

    engineer, _ = sessions.create(who("engineer"), "p")
    for i in range(MAX_SESSIONS - 1):
        now[0] += 1
        sessions.create(who(f"user{i % 20}"), "p")
    assert len(sessions) == MAX_SESSIONS
    sessions.create(who("late"), "p")
    assert len(sessions) == MAX_SESSIONS
    assert sessions.find(engineer)[0] is not None  # one session: never the one to go


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
