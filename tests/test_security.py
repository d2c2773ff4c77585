"""The one user base: configuration checks, logins, lock-out, and what each attempt records."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway import hash_password
from gateway.audit import AuditEvent
from gateway.security import (
    AuthenticationError,
    Authority,
    NotPermittedError,
    Permission,
    SecurityConfig,
)

HASH = hash_password("right")


def _config(**extra: Any) -> SecurityConfig:
    users = [
        {
            "name": "olga",
            "full_name": "Olga Operator",
            "password_hash": HASH,
            "roles": ["operator"],
        },
        {"name": "vic", "password_hash": HASH, "roles": ["viewer"]},
        {"name": "ada", "password_hash": HASH, "roles": ["admin"]},
        {"name": "off", "password_hash": HASH, "roles": ["viewer"], "enabled": False},
    ]
    return SecurityConfig.model_validate({"users": users, **extra})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _authority(**extra: Any) -> tuple[Authority, list[AuditEvent], Clock]:
    events: list[AuditEvent] = []
    clock = Clock()
    return Authority(_config(**extra), events.append, clock), events, clock


def test_a_login_gives_the_identity_with_its_roles_permissions_and_is_recorded() -> None:
    authority, events, _ = _authority()
    identity = authority.authenticate("olga", "right", interface="api", peer="127.0.0.1")
    assert identity.name == "olga" and identity.full_name == "Olga Operator"
    assert identity.permissions == {Permission.READ, Permission.WRITE}
    assert [(e.action, e.user, e.outcome) for e in events] == [("login", "olga", "ok")]
    assert events[0].details == {"interface": "api", "peer": "127.0.0.1"}


@pytest.mark.parametrize(
    ("name", "password", "why"),
    [("olga", "wrong", "wrong password"), ("nobody", "right", "unknown user")],
)
def test_unknown_user_and_wrong_password_give_the_same_message_but_their_own_record(
    name: str, password: str, why: str
) -> None:
    authority, events, _ = _authority()
    with pytest.raises(AuthenticationError) as refused:
        authority.authenticate(name, password, interface="opcua")
    assert str(refused.value) == "login refused: unknown user or wrong password"
    assert [(e.action, e.user, e.outcome, e.reason) for e in events] == [
        ("login.failed", name, "refused", why)
    ]


def test_a_disabled_user_cannot_log_in() -> None:
    authority, events, _ = _authority()
    with pytest.raises(AuthenticationError, match="'off' is disabled"):
        authority.authenticate("off", "right", interface="api")
    assert events[-1].reason == "account disabled"


def test_repeated_failures_lock_the_user_out_even_with_the_right_password_until_it_expires() -> (
    None
):
    authority, events, clock = _authority(
        lockout={"max_failures": 3, "window_s": 60, "duration_s": 300}
    )
    for _ in range(3):
        with pytest.raises(AuthenticationError, match="wrong password"):
            authority.authenticate("olga", "guess", interface="api")
    assert events[-1].action == "user.locked_out" and events[-1].target == "olga"
    with pytest.raises(AuthenticationError, match=r"locked out .* try again in 300 s"):
        authority.authenticate("olga", "right", interface="api")
    assert events[-1].reason == "locked out"
    assert authority.locked_out() == {"olga": 300.0}
    clock.now += 299
    with pytest.raises(AuthenticationError, match="try again in 1 s"):
        authority.authenticate("olga", "right", interface="opcua")
    clock.now += 2  # expired: checked normally again
    assert authority.authenticate("olga", "right", interface="api").name == "olga"
    assert authority.locked_out() == {}


def test_failures_outside_the_window_do_not_add_up() -> None:
    authority, _, clock = _authority(lockout={"max_failures": 2, "window_s": 10, "duration_s": 60})
    with pytest.raises(AuthenticationError):
        authority.authenticate("olga", "guess", interface="api")
    clock.now += 11
    with pytest.raises(AuthenticationError):
        authority.authenticate("olga", "guess", interface="api")
    assert authority.authenticate("olga", "right", interface="api").name == "olga"


def test_no_lockout_when_it_is_off() -> None:
    authority, _, _ = _authority(lockout=None)
    for _ in range(20):
        with pytest.raises(AuthenticationError):
            authority.authenticate("olga", "guess", interface="api")
    assert authority.authenticate("olga", "right", interface="api").name == "olga"


def test_only_a_user_manager_unlocks() -> None:
    authority, events, _ = _authority(lockout={"max_failures": 1})
    with pytest.raises(AuthenticationError):
        authority.authenticate("vic", "guess", interface="api")
    olga = authority.authenticate("olga", "right", interface="api")
    with pytest.raises(NotPermittedError, match="needs manage_users"):
        authority.unlock("vic", olga)
    ada = authority.authenticate("ada", "right", interface="api")
    assert authority.unlock("vic", ada)
    assert events[-1].action == "user.unlocked" and events[-1].user == "ada"
    assert authority.authenticate("vic", "right", interface="api").name == "vic"


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ([{"name": "a", "password_hash": "hunter2", "roles": ["viewer"]}], "not a password hash"),
        ([{"name": "a", "password_hash": HASH, "roles": ["pilot"]}], "unknown role 'pilot'"),
        ([{"name": "a", "password_hash": HASH, "roles": []}], "at least 1 item"),
        (
            [{"name": "a", "password_hash": HASH, "roles": ["viewer"]}] * 2,
            "duplicate user 'a'",
        ),
    ],
)
def test_bad_users_are_refused_with_the_reason(users: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SecurityConfig.model_validate({"users": users})


def test_a_configured_role_is_usable_and_a_builtin_one_can_be_redefined() -> None:
    config = SecurityConfig.model_validate(
        {
            "users": [{"name": "q", "password_hash": HASH, "roles": ["qa"]}],
            "roles": {"qa": {"permissions": ["read", "audit"]}},
        }
    )
    identity = Authority(config).authenticate("q", "right", interface="api")
    assert identity.permissions == {Permission.READ, Permission.AUDIT}
