"""Provision a test sipfilter's store through its own CLI: do-not-call lists and consents for the e2e CSVs.

Matches sipp/csv/policy_mix.csv and docs/sipp.md; goes through the CLI only, never the store files.
"""

from __future__ import annotations

from pathlib import Path

from sipp_harness import sipfilter_cli

ACCOUNT = "e2e-account"
CONSENTED = [f"+336120000{n:02d}" for n in range(1, 10)] + ["+33612000100", "+33612000101"]
LISTS = {"bloctel": ["+33612000100"], "optouts": ["+33612000101"]}


def provision(config_path: Path, workdir: Path, *, extra_consents: list[str] | None = None,
              extra_lists: dict[str, list[str]] | None = None) -> None:
    """Import every list of LISTS (plus `extra_lists`) and record consent for CONSENTED (plus extras)."""
    lists = {name: list(numbers) for name, numbers in LISTS.items()}
    for name, numbers in (extra_lists or {}).items():
        lists.setdefault(name, []).extend(numbers)
    for name, numbers in lists.items():
        source = workdir / f"{name}.txt"
        source.write_text("\n".join(numbers) + "\n", encoding="ascii")
        sipfilter_cli(["lists", "import", "--config", str(config_path), name, str(source)])
    consents = CONSENTED + (extra_consents or [])
    source = workdir / "consents.csv"
    source.write_text("\n".join(consents) + "\n", encoding="ascii")
    sipfilter_cli(["consent", "import", "--config", str(config_path), "--account", ACCOUNT, str(source)])
