"""``crossalign serve INDEX [--host 127.0.0.1] [--port 8000]``: the search service and its page."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve an index over HTTP, with a search page",
                       description="A FastAPI service on uvicorn: GET /search, POST /search/image, "
                                   "GET /items/{id}, GET /images/{id}, the page at /, OpenAPI at /docs.")
    p.add_argument("index", help="index folder written by 'crossalign index'")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--run", help="the run whose model embeds queries (default: the one that "
                                 "built the index)")
    p.add_argument("--max-upload-mb", type=float, default=10.0,
                   help="largest image upload (default 10 MB)")
    p.add_argument("--max-k", type=int, default=100,
                   help="the most results one query may ask for (default 100; the page asks for "
                        "24, or this many if fewer)")
    p.add_argument("--text-runtime", default="auto", choices=["auto", "onnx", "torch"],
                   help="what embeds text queries: ONNX Runtime (onnx), torch, or auto (default: "
                        "ONNX Runtime where the text tower can run there, else torch)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports every CPU variant tried
    from crossalign.serve import serve

    serve(args.index, host=args.host, port=args.port, run=args.run, device=args.device,
          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_k=args.max_k,
          log_level="warning" if args.quiet else "info", text_runtime=args.text_runtime)
    return 0
