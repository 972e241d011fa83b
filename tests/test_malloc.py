"""The CLI's malloc setting: freed large blocks are reused, not given back and faulted in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from crossalign.cli import main as cli_main

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# allocate, touch and free a 64 MB block 12 times; print the page faults that cost and the setting
_PROBE = """
import json, resource, sys
from crossalign.cli.main import keep_freed_memory
on = keep_freed_memory() if sys.argv[1] == "set" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(12):
    block = bytearray(64 << 20)  # zero-filled: every page touched
    del block
print(json.dumps({"on": on, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout)


def test_freed_blocks_are_reused():
    plain, kept = _probe("plain"), _probe("set")
    pages = 12 * (64 << 20) // 4096  # what 12 fresh mappings fault in (4 KB pages)
    assert kept["on"] is True and plain["on"] is False
    assert plain["faults"] > pages // 2  # glibc maps and unmaps each block: faulted in every time
    assert kept["faults"] < plain["faults"] / 4  # the heap keeps the first block and reuses it


def test_opt_out_leaves_malloc_alone():
    assert _probe("set", CROSSALIGN_MALLOC="system")["on"] is False


def test_commands_that_run_towers_set_it(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli_main, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli_main.main(["towers"]) == 0
    assert calls == []  # lists towers: nothing to keep
    assert cli_main.main(["evaluate", str(tmp_path / "no-run")]) == 2  # a clear error, after the setting
    assert calls == [1]
    assert {"train", "tune", "evaluate", "embed"} <= cli_main._KEEP_FREED
    assert not {"serve", "index", "search"} & cli_main._KEEP_FREED  # long-lived, or arrays that grow
