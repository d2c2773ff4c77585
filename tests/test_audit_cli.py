"""``patgw audit verify|export|rotate-key`` as a user runs them, and the ``audit:`` section."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import patgw, tamper_audit, write_config

from gateway.audit import AuditEvent, AuditPaths, read_records, trail_for
from gateway.audit.keys import SigningKey
from gateway.loader import read_config


def configured(tmp_path: Path, **audit: Any) -> tuple[Path, AuditPaths]:
    config: dict[str, Any] = {"site": "plant1", "area": "reactor1"}
    config["store"] = {"path": "data/store.sqlite"}
    if audit:
        config["audit"] = audit
    path = write_config(tmp_path / "gateway.yaml", config)
    loaded = read_config(path)
    return path, loaded.audit.resolved(loaded.store.path, loaded.data_dir)


def filled(tmp_path: Path) -> tuple[Path, AuditPaths]:
    """A configuration and its trail: 12 records, anchored at 4, 8 and 12."""
    config, paths = configured(tmp_path)
    with trail_for(read_config(config)) as trail:
        kept = trail.keep_config(config.read_bytes())  # as a starting gateway keeps it
        trail.append(AuditEvent("gateway.started", details={"config_sha256": kept}))
        for i in range(10):
            user = "operator" if i % 2 else "viewer"
            action = "write.requested" if i % 2 else "login.ok"
            trail.append(AuditEvent(action, user=user, target="t", old=i, new=i + 1, reason="r"))
            if i % 4 == 2:
                trail.sign_head()
        trail.sign_head()
    return config, paths


def last_record(paths: AuditPaths) -> Any:
    return list(read_records(paths.path))[-1]


def test_the_audit_files_default_beside_the_store_and_in_data_dir(tmp_path: Path) -> None:
    _, paths = configured(tmp_path)
    assert paths == AuditPaths(
        tmp_path / "data" / "store.audit.sqlite",
        tmp_path / "data" / "audit" / "gateway-ed25519.key",
        tmp_path / "data" / "store.audit.anchors.jsonl",
    )
    _, paths = configured(tmp_path, path="trail/a.db", key="/etc/patgw/k", anchor_file="x.jsonl")
    assert paths == AuditPaths(
        tmp_path / "trail" / "a.db", Path("/etc/patgw/k"), tmp_path / "x.jsonl"
    )


@pytest.mark.parametrize(
    ("audit", "expected"),
    [
        ({"keyfile": "k"}, "audit.keyfile: Extra inputs are not permitted"),
        ({"sign_interval_s": 0}, "audit.sign_interval_s: Input should be greater than 0"),
    ],
)
def test_a_bad_audit_section_is_named(tmp_path: Path, audit: dict[str, Any], expected: str) -> None:
    config = write_config(tmp_path / "gateway.yaml", {"area": "reactor1", "audit": audit})
    result = patgw("check", str(config))
    assert result.returncode == 2
    assert expected in result.stderr


def test_verify_a_sound_trail_exits_0_and_is_recorded(tmp_path: Path) -> None:
    config, paths = filled(tmp_path)
    result = patgw("audit", "verify", str(config))
    assert result.returncode == 0, result.stderr
    assert "verified 12 records (head 12)" in result.stdout
    record = last_record(paths)
    assert (record.seq, record.event.action, record.event.outcome) == (13, "audit.verified", "ok")
    assert record.event.details["records"] == 12
    assert record.event.details["via"] == "cli"
    assert {r.gateway for r in read_records(paths.path)} == {"plant1/reactor1"}
    assert patgw("audit", "verify", str(config)).returncode == 0  # its own record verifies


@pytest.mark.parametrize(
    ("statements", "first_bad", "words"),
    [
        (["UPDATE audit_records SET new = '50' WHERE seq = 6"], 6, "record 6 was edited"),
        (["DELETE FROM audit_records WHERE seq = 3"], 3, "record 3 is missing (deleted)"),
        (
            [
                "UPDATE audit_records SET seq = -1 WHERE seq = 9",
                "UPDATE audit_records SET seq = 9 WHERE seq = 10",
                "UPDATE audit_records SET seq = 10 WHERE seq = -1",
            ],
            9,
            "record 9 is out of order",
        ),
        (
            ["DELETE FROM audit_records WHERE seq > 10", "DELETE FROM audit_anchors"],
            11,
            "the tail after record 10 was cut",
        ),
    ],
    ids=["edited", "deleted", "swapped", "cut-tail"],
)
def test_verify_a_tampered_trail_exits_2_naming_the_first_bad_record(
    tmp_path: Path, statements: list[str], first_bad: int, words: str
) -> None:
    config, paths = filled(tmp_path)
    tamper_audit(paths.path, *statements)
    result = patgw("audit", "verify", str(config))
    assert result.returncode == 2
    assert "NOT VERIFIED" in result.stderr and words in result.stderr
    record = last_record(paths)
    assert (record.event.action, record.event.outcome) == ("audit.verified", "failed")
    assert record.event.details["first_bad_seq"] == first_bad
    assert words in record.event.details["problem"]
    assert record.event.details["records"] == len(list(read_records(paths.path))) - 1


def test_verify_checks_anchors_collected_upstream(tmp_path: Path) -> None:
    config, paths = filled(tmp_path)
    upstream = tmp_path / "upstream-anchors.jsonl"
    shutil.copy(paths.anchor_file, upstream)
    # Someone cuts the tail and every local trace of its anchors.
    tamper_audit(paths.path, "DELETE FROM audit_records WHERE seq > 9", "DELETE FROM audit_anchors")
    paths.anchor_file.unlink()
    assert patgw("audit", "verify", str(config)).returncode == 0  # locally, nothing shows
    result = patgw("audit", "verify", str(config), "--anchors", str(upstream))
    assert result.returncode == 2
    assert "the chain ends at record 10" in result.stderr  # 9 plus the first verify's record
    assert str(upstream) in result.stderr


def test_verify_with_a_replaced_key_exits_2_and_cannot_record(tmp_path: Path) -> None:
    config, paths = filled(tmp_path)
    SigningKey.generate().save(paths.key)
    result = patgw("audit", "verify", str(config))
    assert result.returncode == 2
    assert "the key was replaced" in result.stderr
    assert "this verification is not recorded" in result.stderr
    assert last_record(paths).seq == 12


@pytest.mark.parametrize("action", ["verify", "export", "rotate-key"])
def test_no_trail_exits_2_and_creates_none(tmp_path: Path, action: str) -> None:
    config, paths = configured(tmp_path)
    result = patgw("audit", action, str(config))
    assert result.returncode == 2
    assert f"audit.path: no audit trail at {paths.path}" in result.stderr
    assert not paths.path.exists() and not paths.key.exists()


def test_export_filters_and_formats(tmp_path: Path) -> None:
    config, paths = filled(tmp_path)
    out = tmp_path / "out.jsonl"
    result = patgw(
        "audit", "export", str(config), "--user", "operator", "--action", "write.*", "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "5 audit records written" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["seq"], r["user"], r["action"], r["old"], r["new"]) for r in rows] == [
        (4, "operator", "write.requested", 1, 2),
        (6, "operator", "write.requested", 3, 4),
        (8, "operator", "write.requested", 5, 6),
        (10, "operator", "write.requested", 7, 8),
        (12, "operator", "write.requested", 9, 10),
    ]
    records = list(read_records(paths.path))
    since = rows[2]["time"]
    result = patgw("audit", "export", str(config), "--format", "csv", "--since", since)
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [int(r["seq"]) for r in table] == [r.seq for r in records if r.ts_ns >= rows[2]["ts_ns"]]
    assert table[0]["seq"] == "8" and table[0]["hash"] == rows[2]["hash"]


def test_export_refuses_a_bad_time(tmp_path: Path) -> None:
    config, _ = filled(tmp_path)
    result = patgw("audit", "export", str(config), "--since", "yesterday")
    assert result.returncode == 2
    assert "--since: not an ISO 8601 time: 'yesterday'" in result.stderr


def test_rotate_key_is_recorded_and_verifies(tmp_path: Path) -> None:
    config, paths = filled(tmp_path)
    old = SigningKey.load(paths.key).id
    result = patgw("audit", "rotate-key", str(config))
    assert result.returncode == 0, result.stderr
    new = SigningKey.load(paths.key).id
    assert new != old and f"{old} -> {new}" in result.stdout
    records = list(read_records(paths.path))
    assert [r.event.action for r in records[-2:]] == [
        "audit.key_rotated",
        "audit.key_rotation_requested",
    ]
    assert (records[-1].event.old, records[-1].event.new) == (old, new)
    result = patgw("audit", "verify", str(config))
    assert result.returncode == 0, result.stderr
    assert f"keys {old}, {new}" in result.stdout
