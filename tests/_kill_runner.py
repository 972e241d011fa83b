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
- ``rendezvous``: create the file ``mine`` and wait for ``other``, so two processes reach
  the same point before either goes on; when ``other`` has not appeared after ``timeout``
  seconds (default 60), the process stops with an error naming it (exit 1);
- ``erofs``: raise ``OSError(EROFS)``, as a read-only folder would;
- ``record``: no fault: save the call's positional arguments (arrays) to
  ``{out}.NNNN.npz``, NNNN the call's number, then run the function (read back with
  :func:`recorded`; with ``"every": true`` every call, e.g. each validation of a training).

With ``"path": TEXT`` only calls whose first argument is a path holding TEXT are counted
(a file descriptor counts as the path it is open on); with ``"every": true`` the action
runs on every such call from the ``call``-th on.

``shard`` sets the feature cache's items per shard (so a small data set spans several).
The exit status is the command's (``-9`` as seen by the parent when killed). The tests
start it through :func:`cli`.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


# tiny frozen random towers (a CNN and an LSTM: their outputs go through the feature cache),
# MLP heads with dropout that train (so RNG states matter), a resume point every 4 steps
TINY = ["model.image.tower=small_cnn", "model.image.width=16", "model.image.image_size=32",
        "model.image.freeze=frozen", "model.text.tower=lstm", "model.text.freeze=frozen",
        "model.text.width=16", "model.text.vocab_size=64", "model.embed_dim=16", "model.head=mlp",
        "model.head_dropout=0.2", "train.batch_size=16", "train.epochs=4", "train.checkpoint_every=4",
        "train.early_stopping=false", "train.tensorboard=false", "train.log_every=1"]


TIMING = {"samples_per_s", "epoch_seconds", "train_seconds"}  # columns that differ run to run


def env() -> dict:
    """One thread per process: tiny steps run fastest so on a shared CPU, and every run alike."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def command(spec: dict | None, *args: str) -> list[str]:
    """The command line that runs ``crossalign -q ARGS`` with the faults of ``spec`` injected."""
    return [sys.executable, __file__, json.dumps(spec or {}), "-q", *args]


def cli(spec: dict | None, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``crossalign -q ARGS`` in a fresh process, with the faults of ``spec`` injected."""
    return subprocess.run(command(spec, *args), env=env(), capture_output=True, text=True, timeout=timeout)


def sets(overrides: list[str]) -> list[str]:
    """``--set`` arguments for a list of ``key=value`` overrides."""
    return [a for s in overrides for a in ("--set", s)]


def rows(path: Path) -> list[dict]:
    """Rows of a run's CSV log, without the timing columns."""
    import csv

    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


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
    elif action == "erofs":
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    elif action == "rendezvous":
        Path(fault["mine"]).touch()
        wait = float(fault.get("timeout", 60))
        deadline = time.monotonic() + wait
        while not Path(fault["other"]).exists():
            if time.monotonic() > deadline:  # going on alone would test nothing shared
                raise SystemExit(f"kill runner: rendezvous: {fault['other']} did not appear "
                                 f"within {wait:g} s; the other process never reached this point")
            time.sleep(0.01)
    else:
        raise SystemExit(f"kill runner: unknown action {action!r}")


def _record(out: str, n: int, args: tuple) -> None:
    import numpy as np

    np.savez(f"{out}.{n:04d}.npz", *[np.asarray(a) for a in args])


def recorded(out: str | Path) -> list[tuple]:
    """The arguments the ``record`` action saved under ``out``, call by call."""
    import numpy as np

    out = Path(out)
    files = sorted(out.parent.glob(f"{out.name}.[0-9][0-9][0-9][0-9].npz"))
    loaded = []
    for f in files:
        with np.load(f) as z:
            loaded.append(tuple(z[f"arr_{i}"] for i in range(len(z.files))))
    return loaded


def _path_of(arg) -> str:
    """The path a call is about: a path given as such, or the file a descriptor is open on."""
    if isinstance(arg, int):
        try:
            return os.readlink(f"/proc/self/fd/{arg}")
        except OSError:
            return ""
    return str(arg) if isinstance(arg, (str, os.PathLike)) else ""


def _patch(fault: dict) -> None:
    owner, name = _resolve(fault["target"])
    real = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        if "path" not in fault or (args and fault["path"] in _path_of(args[0])):
            calls["n"] += 1
            if calls["n"] == fault["call"] or (fault.get("every") and calls["n"] > fault["call"]):
                if fault["action"] == "record":
                    _record(fault["out"], calls["n"], args)
                else:
                    _act(fault)
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)


def _set_shard(n: int) -> None:
    """Items per cache shard in the embedding code, so a tiny run writes several shards."""
    from crossalign.embed import towers as _towers

    _towers.SHARD = n


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
