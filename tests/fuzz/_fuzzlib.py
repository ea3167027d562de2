"""Shared plumbing of the atheris fuzz targets: argv handling and a corpus seeded from RFC 4475.

Imported by the fuzz_*.py scripts only; it must not import sipfilter (targets instrument their own imports).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
RFC4475 = TESTS / "data" / "rfc4475"


def seed_corpus(dest: Path, extra: dict[str, bytes] | None = None) -> Path:
    """Fill `dest` with the RFC 4475 torture messages (copies: libFuzzer writes into its corpus dir)."""
    dest.mkdir(parents=True, exist_ok=True)
    for dat in sorted(RFC4475.glob("*.dat")):
        shutil.copyfile(dat, dest / dat.name)
    for name, data in (extra or {}).items():
        (dest / name).write_bytes(data)
    return dest


def run(test_one_input: Callable[[bytes], None], extra_seeds: dict[str, bytes] | None = None) -> None:
    """Run atheris with libFuzzer's argv; without a corpus directory, use a fresh seeded temp one."""
    import atheris

    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        tmp = Path(tempfile.mkdtemp(prefix="sipfilter-fuzz-"))
        args.append(str(seed_corpus(tmp / "corpus", extra_seeds)))
    else:
        for a in args[1:]:
            if not a.startswith("-"):
                path = Path(a)
                if path.is_dir() and not any(path.iterdir()):
                    seed_corpus(path)
                # The target's own seeds (hand-written paths deep into its logic) always go in.
                for name, data in (extra_seeds or {}).items():
                    if path.is_dir() and not (path / name).exists():
                        (path / name).write_bytes(data)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()
