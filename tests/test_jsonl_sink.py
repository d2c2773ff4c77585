"""The jsonl_file sink keeps its file whole: a failed write is cut back, a half line left by a
crash is cut off at the next start."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway import PluginContext, Quality, Sample
from plugins.jsonl_file.plugin import JsonlFileOptions, JsonlFileSink


def test_jsonl_file_has_no_corrupt_line_after_a_full_disk(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, resource, signal
        from pathlib import Path
        from gateway import Sample, Quality
        from plugins.jsonl_file.plugin import JsonlFileSink, JsonlFileOptions

        class Ctx:
            data_dir = Path({str(tmp_path)!r})

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        samples = [Sample("t/c/x", float(i), "1", 10**18, 10**18, Quality.GOOD, i, None)
                   for i in range(200)]

        async def main():
            options = JsonlFileOptions(path=Path({str(tmp_path)!r}) / "out.jsonl")
            sink = JsonlFileSink(options, Ctx())
            async with sink:
                await sink.forward(samples[:10], False)  # fine
                size = sink.path.stat().st_size
                resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50, hard))  # disk full
                try:
                    await sink.forward(samples[10:], False)
                except OSError as exc:
                    print("first forward failed:", exc)
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
                await sink.forward(samples[10:], True)  # the runtime's retry from the store
                print("retry ok")

        asyncio.run(main())
        """
    )
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    bad, seen = [], set()
    for line in (tmp_path / "out.jsonl").read_text().splitlines():
        try:
            seen.add(json.loads(line)["seq"])
        except ValueError:
            bad.append(line[:60] + "...")
    assert not bad and seen == set(range(200)), (
        f"{done.stdout}{len(bad)} corrupt line(s) {bad};"
        f" missing seq {sorted(set(range(200)) - seen)}"
    )


@pytest.mark.asyncio
async def test_a_half_line_left_by_a_crash_is_cut_off_at_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"seq":0}\n{"seq":1}\n{"signal":"t/c/x","va')  # killed mid-write
    sample = Sample("t/c/x", 2.0, "1", 10**18, 10**18, Quality.GOOD, 2, None)
    async with JsonlFileSink(JsonlFileOptions(path=path), PluginContext("f", tmp_path)) as sink:
        await sink.forward([sample], True)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [x["seq"] for x in lines] == [0, 1, 2] and lines[2]["historical"] is True
