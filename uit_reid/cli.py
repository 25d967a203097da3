"""The ``uit-reid`` command."""

from __future__ import annotations

import argparse
import sys

from uit_reid import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uit-reid", description="Text-to-image person retrieval (UIT).")
    parser.add_argument("--version", action="version", version=f"uit-reid {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="train and evaluate the tiny model on the synthetic dataset")
    args = parser.parse_args(argv)
    if args.command == "demo":
        print("The demo arrives with the trainer (issue 5).", file=sys.stderr)
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
