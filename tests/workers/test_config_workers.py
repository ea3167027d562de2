"""`sip.workers`: a count or `auto`, and several only on UDP-only listeners."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipfilter.config import ConfigError
from sipfilter.config.cpus import usable_cpus
from sipfilter.config.model import MAX_WORKERS
from sipfilter.configure import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "sipfilter.yaml"
PACK = ROOT / "config" / "rules" / "fr.yaml"
TCP_LISTENER = "    - { transport: tcp, host: 127.0.0.1, port: 5060 }\n"


def example(tmp_path: Path, workers: str, *, udp_only: bool = True) -> Path:
    text = EXAMPLE.read_text().replace("rules/fr.yaml", str(PACK))
    assert "  workers: 1\n" in text and TCP_LISTENER in text
    text = text.replace("  workers: 1\n", f"  workers: {workers}\n")
    if udp_only:
        text = text.replace(TCP_LISTENER, "")
    path = tmp_path / "sipfilter.yaml"
    path.write_text(text)
    return path


def test_the_example_runs_one_worker() -> None:
    assert load_config(EXAMPLE).sip.workers == 1


@pytest.mark.parametrize(("value", "expected"),
                         [("1", 1), ("2", 2), ("16", 16), ("256", 256), ("auto", usable_cpus())])
def test_counts_and_auto(tmp_path: Path, value: str, expected: int) -> None:
    assert load_config(example(tmp_path, value)).sip.workers == expected


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "many", "true", "257"])
def test_bad_counts_are_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(example(tmp_path, value))
    assert err.value.field == "sip.workers"


def test_several_workers_need_udp_only_listeners(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="UDP-only") as err:
        load_config(example(tmp_path, "2", udp_only=False))
    assert err.value.field == "sip.workers"
    assert load_config(example(tmp_path, "1", udp_only=False)).sip.workers == 1


def test_auto_stops_at_the_most_workers_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sipfilter.config.sections.usable_cpus", lambda: 1024)
    assert load_config(example(tmp_path, "auto")).sip.workers == MAX_WORKERS
