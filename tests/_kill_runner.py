"""Run the crossalign command line with one fault injected (tests only, never the library).

    python tests/_kill_runner.py SPEC_JSON ARG ...

runs ``crossalign.cli.main.main([ARG, ...])`` after patching the functions named in the
spec, a JSON object::

    {"faults": [{"target": "crossalign.train.engine:Engine._optimizer_step",
                 "call": 7, "action": "kill"}],
     "shard": 16}

``target`` is ``module:attribute[.attribute]``: the name is replaced where it is looked up.
On the ``call``-th call (counted in this process) the action runs:

- ``kill``: ``os.kill(os.getpid(), SIGKILL)`` before the real function runs;
- ``enospc``: raise ``OSError(ENOSPC)``, as a full disk would, before it runs;
- ``rendezvous``: create the file ``mine`` and wait (up to a minute) for ``other``, so two
  processes reach the same point before either goes on.

``shard`` sets the feature cache's items per shard (so a small data set spans several).
The exit status is the command's (``-9`` as seen by the parent when killed).
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path


def _resolve(target: str):
    """(owner object, attribute name) for ``module:attr[.attr]``."""
    module, _, attrs = target.partition(":")
    owner = importlib.import_module(module)
    *path, name = attrs.split(".")
    for a in path:
        owner = getattr(owner, a)
    if not hasattr(owner, name):
        raise SystemExit(f"kill runner: {target} does not exist")
    return owner, name


def _act(fault: dict) -> None:
    action = fault["action"]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    elif action == "rendezvous":
        Path(fault["mine"]).touch()
        deadline = time.time() + 60
        while not Path(fault["other"]).exists() and time.time() < deadline:
            time.sleep(0.01)
    else:
        raise SystemExit(f"kill runner: unknown action {action!r}")


def _patch(fault: dict) -> None:
    owner, name = _resolve(fault["target"])
    real = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fault["call"]:
            _act(fault)
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)


def _set_shard(n: int) -> None:
    """Items per cache shard, wherever the embedding code keeps it."""
    found = False
    for module in ("crossalign.embed._towers", "crossalign.embed", "crossalign.evaluate.embed"):
        try:
            m = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(m, "SHARD"):
            m.SHARD, found = n, True
    if not found:
        raise SystemExit("kill runner: no SHARD setting found in the embedding code")


def main() -> int:
    spec = json.loads(sys.argv[1])
    if "shard" in spec:
        _set_shard(int(spec["shard"]))
    for fault in spec.get("faults", []):
        _patch(fault)
    from crossalign.cli.main import main as cli_main

    return cli_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
