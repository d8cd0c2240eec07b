"""Entry point of the `pyresa` command."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, each with add_parser(subparsers); missing ones are skipped.
SUBCOMMANDS = ["generate", "chat", "serve", "eval"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyresa", description="Run GGUF language models with Rectified Sparse Attention.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"pyresa.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"pyresa.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pyresa.errors import PyresaError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except PyresaError as e:
        print(f"pyresa: error: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"pyresa: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
