"""`pyresa serve`: an OpenAI-compatible HTTP API for one model (FastAPI on uvicorn)."""

from __future__ import annotations

import argparse
import sys

from pyresa.cli import common
from pyresa.cli.chat import load_tokenizer_quietly


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                              description="Serve a model over an OpenAI-compatible HTTP API: /v1/models, "
                                          "/v1/completions, /v1/chat/completions (streaming by server-sent "
                                          "events). One sequence at a time; requests wait in line.")
    configure(p)
    return p


def configure(p: argparse.ArgumentParser) -> None:
    common.add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", "-p", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--alias", default=None, metavar="NAME",
                   help="model id that /v1/models lists (default: the file name without .gguf)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="requests waiting or running at once before new ones get 503 (default: 64)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default: info)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from pyresa.server import create_app
    except ImportError as e:
        print(f"pyresa serve needs the server extra ({e.name} is missing): pip install 'pyresa[server]'",
              file=sys.stderr)
        return 2
    if args.max_queue < 1:
        print("pyresa: --max-queue must be at least 1", file=sys.stderr)
        return 2
    model = common.load_model(args)
    try:
        load_tokenizer_quietly(model)  # now, not during the first request
    except Exception as e:
        print(f"pyresa: {e}", file=sys.stderr)
        return 2
    app = create_app(model, model_name=args.alias, max_queue=args.max_queue)
    name = app.state.pyresa.name
    print(f"pyresa serve: {name} on {model.device}, n_ctx {model.n_ctx}; "
          f"OpenAI API at http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0

