"""One store, one gateway, whatever path reaches the store file: the lock is on its identity."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway import Quality, Signal, StoreError
from gateway.store import SampleStore

FLOW = Signal("r1/pump/flow", "mL/min", instrument="pump")


def commit(store: SampleStore, first_seq: int, count: int) -> None:
    def_id = store.define([FLOW])[FLOW.id].def_id
    rows = [
        (def_id, seq, 1_000 + seq, 1_001 + seq, int(Quality.GOOD), float(seq), None)
        for seq in range(first_seq, first_seq + count)
    ]
    store.commit(rows, {FLOW.id: first_seq + count})


def hard_link_elsewhere(store: Path, tmp_path: Path) -> Path:
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.link(store, other / "copy.sqlite")
    return other / "copy.sqlite"


def hard_link_beside(store: Path, _tmp_path: Path) -> Path:
    os.link(store, store.with_name("beside.sqlite"))
    return store.with_name("beside.sqlite")


def symlinked_folder(store: Path, tmp_path: Path) -> Path:
    (tmp_path / "via").symlink_to(store.parent, target_is_directory=True)
    return tmp_path / "via" / store.name


OTHER_PATHS = {
    "hard link in another folder": hard_link_elsewhere,
    "hard link in the same folder": hard_link_beside,
    "symlinked folder": symlinked_folder,
}


@pytest.mark.parametrize("other_path", OTHER_PATHS.values(), ids=OTHER_PATHS.keys())
def test_a_second_gateway_through_another_path_is_refused_and_the_first_keeps_its_rows(
    tmp_path: Path, other_path: Callable[[Path, Path], Path], request: pytest.FixtureRequest
) -> None:
    store_dir = tmp_path / "store"
    path = store_dir / "s.sqlite"
    first = SampleStore(path)
    try:
        commit(first, 0, 42)
        other = other_path(path, tmp_path)
        with pytest.raises(StoreError) as refused:
            SampleStore(other)
        message = str(refused.value)
        assert f"in use by another gateway (pid {os.getpid()}" in message
        assert f"opened as {path.resolve()}" in message  # names the holder's path
        assert "one store, one gateway" in message
        commit(first, 42, 8)  # the first gateway goes on
    finally:
        first.close()
    with capture_logs() as logs:
        reopened = SampleStore(other)  # free again once the first one is gone
    try:
        assert [s.seq for s in reopened.samples()] == list(range(50))
    finally:
        reopened.close()
    # A hard-linked store is named at start: SQLite keeps a WAL per name.
    warned = [e for e in logs if e["event"] == "store.hard_linked"]
    assert [e["links"] for e in warned] == ([2] if "hard link" in request.node.name else [])


def _can_bind_mount() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True, timeout=30, check=False
        )
    except OSError:
        return False
    return done.returncode == 0


OPEN_IN_CHILD = """
import sys
from pathlib import Path
from gateway import StoreError
from gateway.store import SampleStore
try:
    SampleStore(Path(sys.argv[1])).close()
except StoreError as exc:
    print(exc)
    sys.exit(1)
"""


@pytest.mark.parametrize("via", ["hard link", "bind mount of the file", "bind mount of the folder"])
def test_a_second_gateway_process_on_another_path_is_refused(tmp_path: Path, via: str) -> None:
    store_dir = tmp_path / "store"
    path = store_dir / "s.sqlite"
    first = SampleStore(path)
    try:
        commit(first, 0, 42)
        if via == "hard link":
            other = hard_link_elsewhere(path, tmp_path)
            command = [sys.executable, "-c", OPEN_IN_CHILD, str(other)]
        else:
            if not _can_bind_mount():
                pytest.skip("no mount namespace here (unshare -rm)")
            (tmp_path / "mnt").mkdir()
            if via == "bind mount of the file":
                source, other = path, tmp_path / "mnt" / "other.sqlite"
                target = other
                other.touch()  # the mount point
            else:
                source, target = store_dir, tmp_path / "mnt"
                other = target / path.name
            # Another mount point, seen only by the child (in its own mount namespace).
            script = 'mount --bind "$1" "$2" && exec "$3" -c "$4" "$5"'
            command = ["unshare", "-rm", "sh", "-c", script, "sh", str(source), str(target)]
            command += [sys.executable, OPEN_IN_CHILD, str(other)]
        child = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert child.returncode == 1, child.stdout + child.stderr
        assert f"{other} is in use by another gateway (pid {os.getpid()} on " in child.stdout
        assert f"opened as {path.resolve()}" in child.stdout
        assert "the same file" in child.stdout and "through another path" in child.stdout
        commit(first, 42, 1)
        assert [s.seq for s in first.samples()] == list(range(43))
    finally:
        first.close()


def test_the_lock_is_taken_before_the_store_exists_and_released_on_close(tmp_path: Path) -> None:
    path = tmp_path / "new" / "s.sqlite"
    first = SampleStore(path)  # first start: the file is created to get its identity
    held = first._lock.files if first._lock else []
    assert len(held) == 2 and all(file.exists() for file in held)
    assert path.parent in {file.parent for file in held}
    with pytest.raises(StoreError, match="in use by another gateway"):
        SampleStore(path)
    first.close()
    assert not any(file.exists() for file in held)  # no lock files left behind
    again = SampleStore(path)
    again.close()


def test_a_killed_gateway_leaves_no_lock(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    script = (
        "import sys, time; from pathlib import Path; from gateway.store import SampleStore;"
        " store = SampleStore(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        with pytest.raises(StoreError, match=f"in use by another gateway \\(pid {child.pid} "):
            SampleStore(path)
    finally:
        child.kill()
        child.communicate()
    SampleStore(path).close()  # the OS dropped the dead gateway's lock; its lock files are reused


RACE = """
import os, sys
from pathlib import Path
from gateway import StoreError
from gateway.store.lock import lock_store
store, marker, rounds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
held = 0
while held < rounds:
    try:
        lock = lock_store(store)
    except StoreError:
        continue
    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # fails if two hold it
    os.unlink(marker)
    lock.release()
    held += 1
print(held)
"""


def test_gateways_racing_for_one_store_never_hold_it_together(tmp_path: Path) -> None:
    """Lock files are removed on release: one opened just before must not give a second
    holder. Four processes take and release the lock through two paths, 100 times each."""
    (tmp_path / "store").mkdir()
    path = tmp_path / "store" / "s.sqlite"
    path.touch()
    link = hard_link_elsewhere(path, tmp_path)
    marker = tmp_path / "holder"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(p), str(marker), "100"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in (path, link, path, link)
    ]
    results = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0, 0, 0], results
    assert [out.splitlines()[-1] for out, _ in results] == ["100"] * 4
