"""Console sessions: who is logged in in which browser, kept in memory on the server.

A session is created by a login and named by a random token (32 bytes, URL-safe) that the
browser holds in the ``patgw_session`` cookie; the server keeps only the token's SHA-256, so a
memory dump does not hand out live sessions. Each session has its own CSRF token, which every
``POST`` must carry (form field ``csrf`` or header ``X-CSRF-Token``). A session unused for
``idle_timeout_s`` is over. A user has at most :data:`MAX_SESSIONS_PER_USER` (a new login ends
that user's least recently used one), so one user logging in again and again never ends
another's session; at most :data:`MAX_SESSIONS` are kept in all (then the least recently used
session of the user holding the most makes room). A restart ends every session.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..security import Identity

__all__ = ["COOKIE", "MAX_SESSIONS", "MAX_SESSIONS_PER_USER", "Session", "Sessions"]

COOKIE = "patgw_session"
MAX_SESSIONS = 256
MAX_SESSIONS_PER_USER = 16


@dataclass(slots=True)
class Session:
    identity: Identity
    csrf: str
    peer: str
    last_used: float
    key: bytes = field(repr=False)

    def csrf_matches(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class Sessions:
    """The open sessions of one console."""

    def __init__(self, idle_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._open: dict[bytes, Session] = {}  # least recently used first

    def __len__(self) -> int:
        return len(self._open)

    def create(self, identity: Identity, peer: str) -> tuple[str, Session]:
        """A new session for ``identity``; returns its cookie token and the session."""
        token = secrets.token_urlsafe(32)
        key = _key(token)
        mine = [k for k, s in self._open.items() if s.identity.name == identity.name]
        if len(mine) >= MAX_SESSIONS_PER_USER:
            del self._open[mine[0]]  # this user's least recently used
        elif len(self._open) >= MAX_SESSIONS:
            counts = collections.Counter(s.identity.name for s in self._open.values())
            busiest = counts.most_common(1)[0][0]
            del self._open[next(k for k, s in self._open.items() if s.identity.name == busiest)]
        session = Session(identity, secrets.token_urlsafe(32), peer, self._clock(), key)
        self._open[key] = session
        return token, session

    def find(
        self, token: str | None, *, touch: bool = True
    ) -> tuple[Session | None, Session | None]:
        """The live session of ``token`` (None if there is none), and the session it named if
        that has just expired (it is closed now). ``touch``: this use counts as activity."""
        if not token:
            return None, None
        key = _key(token)
        session = self._open.get(key)
        if session is None:
            return None, None
        now = self._clock()
        if now - session.last_used > self.idle_timeout_s:
            del self._open[key]
            return None, session
        if touch:
            session.last_used = now
            self._open[key] = self._open.pop(key)  # now the most recently used
        return session, None

    def alive(self, session: Session) -> bool:
        """Whether ``session`` is still open and not idle for too long (without touching it)."""
        if self._open.get(session.key) is not session:
            return False
        return self._clock() - session.last_used <= self.idle_timeout_s

    def close(self, session: Session) -> None:
        self._open.pop(session.key, None)
