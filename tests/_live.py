"""The service on a free loopback port, in a thread of the test process, as uvicorn serves it
(with the deadline-keeping h11 protocol the command uses)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app, http=None, **config) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its URL. ``http``: the protocol class
    (default: the service's own)."""
    import uvicorn

    from crossalign.serve._protocol import GuardedH11Protocol

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           http=http or GuardedH11Protocol, **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the service did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def shapes_index(root, shapes_dir):
    """An index of a copy of the shapes data (tests may damage its files) under ``root``, made
    with a run trained for one epoch; returns the index folder."""
    import shutil

    from crossalign.cli.main import main
    from crossalign.index.build import build_index

    data = root / "data"
    shutil.copytree(shapes_dir, data)
    assert main(["-q", "train", "--data", str(data), "--out", str(root / "run"), "--fixed",
                 "--set", "train.epochs=1", "--set", "train.batch_size=64"]) == 0
    build_index(root / "run", root / "idx", data=data, progress=False)
    return root / "idx"
