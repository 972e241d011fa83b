"""``crossalign serve INDEX [--host 127.0.0.1] [--port 8000]``: the search service and its page."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve an index over HTTP, with a search page",
                       description="A FastAPI service on uvicorn: GET /search, POST /search/image, "
                                   "GET /items/{id}, GET /images/{id}, GET /explain, the page at /, "
                                   "OpenAPI at /docs, Prometheus metrics at /metrics. With a token "
                                   "(CROSSALIGN_TOKEN or --token-file) every route but /health "
                                   "asks for it.")
    p.add_argument("index", help="index folder written by 'crossalign index'")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; any other "
                        "needs a token or --no-auth)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--run", help="the run whose model embeds queries (default: the one that "
                                 "built the index)")
    p.add_argument("--token-file", help="a file whose first line is the token every request but "
                                        "/health must carry (default: CROSSALIGN_TOKEN in the "
                                        "environment; no token if neither)")
    p.add_argument("--no-auth", action="store_true",
                   help="serve an address other than loopback without a token, on purpose")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name the service answers to besides the loopback names and "
                        "--host (repeatable; the name clients and a reverse proxy use)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes, each with the index open (default 1)")
    p.add_argument("--max-upload-mb", type=float, default=10.0,
                   help="largest image upload (default 10 MB)")
    p.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="most pixels of an uploaded image, read from its header before decoding "
                        "(default 40000000)")
    p.add_argument("--max-k", type=int, default=100,
                   help="the most results one query may ask for (default 100; the page asks for "
                        "24, or this many if fewer)")
    p.add_argument("--max-connections", type=int, default=256,
                   help="open connections per worker; past it, 503 at once (default 256)")
    p.add_argument("--log-queries", action="store_true",
                   help="write each request's query string into the access log (default: the "
                        "path only)")
    p.add_argument("--secure-cookie", action="store_true",
                   help="mark the sign-in cookie Secure (the page is reached over HTTPS through "
                        "a reverse proxy)")
    p.add_argument("--text-runtime", default="auto", choices=["auto", "onnx", "torch"],
                   help="what embeds text queries: ONNX Runtime (onnx), torch, or auto (default: "
                        "ONNX Runtime where the text tower can run there, else torch)")
    p.add_argument("--device", default="auto", help="auto (cuda where there is a GPU, else cpu), cpu, cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossalign.api import serve
    from crossalign.cli._call import call

    call(serve, args)
    return 0
