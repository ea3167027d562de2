"""`sipfilter demo`: a lab sipfilter between a SIPp dialer and a SIPp carrier; each call's outcome as it
happens, a summary, everything stopped at the end. Argument parsing only; the demo lives in sipfilter/demo.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="place lab calls through sipfilter with SIPp and show each outcome (needs a source checkout)",
        description="Start sipfilter on a lab trunk (hours opened, holidays and frequency cap lifted: lab "
        "settings, in a generated config), a SIPp carrier and a SIPp dialer playing sipp/csv/policy_mix.csv; "
        "print each call's outcome as it happens and a summary, then stop everything. Exit 0 when every call "
        "ended as the CSV expects.",
    )
    p.add_argument("--rate", type=float, default=2.0, help="calls per second (default: %(default)s)")
    p.add_argument("--calls", type=Path, help="dialer CSV (default: sipp/csv/policy_mix.csv)")
    p.add_argument("--workdir", type=Path,
                   help="where the config, data, logs and traces go (kept; default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sipfilter.demo import run_demo
    from sipfilter.lab import LabError

    if not 0 < args.rate <= 100:
        print("sipfilter demo: --rate must be between 0 and 100 calls/s", file=sys.stderr)
        return 2
    try:
        return run_demo(rate=args.rate, workdir=args.workdir, keep=args.keep, calls=args.calls)
    except LabError as exc:
        print(f"sipfilter demo: {exc}", file=sys.stderr)
        return 2
