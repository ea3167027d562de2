"""`sipfilter run --config FILE`: start the B2BUA with everything it needs and serve until stopped.

Argument parsing only; the wiring lives in sipfilter/app.py.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run the SIP B2BUA (SIGHUP reloads the config, SIGTERM drains and stops)",
        description="Run sipfilter inline between dialers and carriers. SIGHUP reloads the configuration, "
        "rule packs and lists without dropping calls (a bad config is refused and the old one kept); "
        "SIGTERM refuses new INVITEs with 503 + Retry-After and stops when calls have ended or the "
        "drain timeout expires.",
    )
    p.add_argument("--config", "-c", default="config/sipfilter.yaml", help="configuration file (YAML)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sipfilter.app import run

    return run(args.config)
