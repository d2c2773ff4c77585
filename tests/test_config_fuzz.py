"""Fuzzing the configuration loader: whatever the file holds, the answer is a ConfigError."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import ConfigError, build_registry, load_plan

REGISTRY = build_registry()

KEYS = [
    "version", "site", "area", "data_dir", "store", "logging", "view", "emulators",
    "instruments", "sinks", "id", "driver", "type", "options", "signals", "unit", "channel",
    "source_unit", "poll_interval_s", "backoff", "profile", "registers", "port", "host",
    "address", "name", "scale", "transport", "path", "on_full", "max_s", "initial_s",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["modbus", "feed_pump", "jsonl_file", "mL/min", "ml/mn", "feed_pump", "rtu"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), children, max_size=5
        ),
    ),
    max_leaves=25,
)
configs = st.dictionaries(st.sampled_from(KEYS), values, max_size=8).map(
    lambda d: {"area": "r1", **d} if "area" not in d else d
)


def load_text(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_bytes(data)
        try:
            load_plan(path, REGISTRY)
        except ConfigError as exc:
            problems = exc.problems
        else:
            return  # the fuzzer found a valid configuration
    assert problems
    assert all(isinstance(line, str) and line for line in problems)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_structured_garbage_gives_config_errors(config: dict[str, Any]) -> None:
    load_text(yaml.safe_dump(config).encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_config_errors(data: bytes) -> None:
    load_text(data)


def test_invalid_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("area: réacteur\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_plan(path, REGISTRY)
    assert caught.value.problems[0].startswith(f"{path}: not UTF-8 text")
