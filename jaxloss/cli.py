"""The ``jaxloss`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jaxloss


def _check(_: argparse.Namespace) -> int:
    from jaxloss.testing import run_checks

    results = run_checks()
    header = ("loss", "custom_vjp", "max rel grad err vs jax.grad", "finite diff", "extremes",
              "status")
    rows = [
        (r.name, "yes" if r.custom_vjp else "no", f"{r.max_rel_error:.2e}",
         "ok" if r.finite_differences else "FAIL", "ok" if r.extremes_finite else "FAIL",
         "ok" if r.ok else "FAIL")
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    failures = [r for r in results if not r.ok]
    for r in failures:
        print(f"FAIL {r.name}: {r.error}", file=sys.stderr)
    print(f"\n{len(results) - len(failures)}/{len(results)} checks ok")
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxloss", description="Numerically exact loss functions for JAX."
    )
    parser.add_argument("--version", action="version", version=f"jaxloss {jaxloss.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check", help="verify every built-in loss's gradient (float64 reference, "
        "finite differences, extreme inputs)"
    )
    check.set_defaults(run=_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
