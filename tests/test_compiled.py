"""The compiled call path (sipfilter.compiled, scripts/compile): used only when up to date, never mixed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sipfilter import compiled

REPO = Path(__file__).resolve().parents[1]
PROBE = (
    "import sipfilter.compiled as c, sipfilter.sip.message as m, sipfilter.b2bua.core as core; "
    "print(c.status); print(m.__file__); print(core.__file__)"
)


def _probe(**env: str) -> tuple[str, list[str], str]:
    """(status, files of two compiled modules, stderr) as a fresh interpreter sees them."""
    clean = {k: v for k, v in os.environ.items() if k != "SIPFILTER_PURE"}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True,
                          env={**clean, **env}, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    status, *files = done.stdout.splitlines()
    return status, files, done.stderr


def _built() -> bool:
    return compiled.stale_reason() is None


def test_sipfilter_pure_loads_every_listed_module_from_source() -> None:
    status, files, _ = _probe(SIPFILTER_PURE="1")
    assert all(f.endswith(".py") for f in files), files
    if any(compiled.extension_paths(m) for m in compiled.MODULES):
        assert status == "pure Python (SIPFILTER_PURE is set)"


@pytest.mark.skipif(not _built(), reason="the call path is not compiled here (scripts/compile)")
def test_an_up_to_date_build_is_what_runs() -> None:
    status, files, stderr = _probe()
    assert status == "compiled (mypyc)"
    assert all(not f.endswith(".py") for f in files), files
    assert stderr == ""


def test_the_manifest_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = tmp_path / "compiled.json"
    monkeypatch.setattr(compiled, "MANIFEST", manifest)
    monkeypatch.setattr(compiled, "extension_paths", lambda module: [tmp_path / f"{module}.so"])
    assert compiled.stale_reason() == "the build did not finish: run scripts/compile"
    manifest.write_text("{not json", encoding="utf-8")
    assert compiled.stale_reason() == "the build did not finish: run scripts/compile"
    sources = compiled.digests()
    manifest.write_text(json.dumps({"sources": sources}), encoding="utf-8")
    assert compiled.stale_reason() is None
    sources["sipfilter.sip.message"] = "0" * 64  # as if message.py was edited after the build
    manifest.write_text(json.dumps({"sources": sources}), encoding="utf-8")
    assert compiled.stale_reason() == "sipfilter.sip.message changed since compiled: run scripts/compile"


def test_from_source_finder_only_takes_the_listed_modules() -> None:
    finder = compiled._FromSource(compiled.MODULES)
    spec = finder.find_spec("sipfilter.sip.message", None)
    assert spec is not None and spec.origin == str(REPO / "sipfilter" / "sip" / "message.py")
    assert finder.find_spec("sipfilter.policy.rulepack", None) is None
    assert all(compiled.source_path(m).is_file() for m in compiled.MODULES)


def test_a_build_missing_a_module_is_not_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Compiled modules call each other inside their shared library: one of them imported from source
    # would be a second, different class for the same name.
    monkeypatch.setattr(compiled, "extension_paths",
                        lambda module: [] if module.endswith(".uri") else [tmp_path / "x.so"])  # fmt: skip
    assert compiled.stale_reason() == "the build is incomplete: run scripts/compile"


# Counts, in runs of the in-process benchmark (1 in 3 calls rejected, metrics on) of 20 and 60 calls, after a
# first run that leaves nothing to set up once per process: the calls of methods that dataclass() generated
# (exec'd code, "<string>") on classes of the compiled modules, and of functions of sipfilter's own sources
# (interpreted: not compiled, or compiled and not used).
_INTERPRETED_PER_CALL = """
import asyncio, collections, json, runpy, sys
from sipfilter.compiled import MODULES, PACKAGE_DIR
bench = runpy.run_path("bench/b2bua.py", run_name="bench_b2bua")
package = str(PACKAGE_DIR) + "/"
def counted(calls):
    generated, interpreted = collections.Counter(), collections.Counter()
    def hook(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if code.co_filename == "<string>" and code.co_qualname.startswith("__create_fn__"):
            cls = type(frame.f_locals.get("self"))
            if cls.__module__ in MODULES:
                generated[cls.__qualname__ + "." + code.co_name] += 1
        elif code.co_filename.startswith(package):
            interpreted[code.co_filename[len(package):] + ":" + code.co_qualname] += 1
    sys.setprofile(hook)
    try:
        asyncio.run(bench["run"](calls, 3, False, 0, True))
    finally:
        sys.setprofile(None)
    return generated, interpreted
counted(20)
few, many = counted(20), counted(60)
print(json.dumps([{k: m[k] - f[k] for k in m if m[k] != f[k]} for f, m in zip(few, many)]))
"""

# What a call may still run interpreted: a lookup of the rule pack's answer, only for refused calls.
INTERPRETED_ALLOWED = {"policy/rulepack.py:RuleSet.answer"}


@pytest.fixture(scope="module")
def interpreted_per_40_calls() -> tuple[dict[str, int], dict[str, int]]:
    done = subprocess.run([sys.executable, "-c", _INTERPRETED_PER_CALL], cwd=REPO, capture_output=True,
                          text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr
    generated, interpreted = json.loads(done.stdout.splitlines()[-1])
    return generated, interpreted


@pytest.mark.skipif(os.environ.get("SIPFILTER_PURE") == "1",
                    reason="checks the classes' source, which the compiled run has checked")  # fmt: skip
def test_a_call_runs_no_method_that_dataclass_generated(
    interpreted_per_40_calls: tuple[dict[str, int], dict[str, int]],
) -> None:
    """mypyc compiles the methods a class writes out, and leaves the ones dataclass() generates interpreted:
    a dataclass built for every message or call writes its own __init__ (and __eq__/__hash__ where the call
    compares or hashes it), or it costs about 0.8 µs a construction instead of 0.09."""
    generated, _ = interpreted_per_40_calls
    assert generated == {}, f"dataclass()-generated methods run for every call: {generated}"


@pytest.mark.skipif(os.environ.get("SIPFILTER_PURE") == "1", reason="the pure run interprets every module")
def test_a_call_runs_no_interpreted_function_of_sipfilter(
    interpreted_per_40_calls: tuple[dict[str, int], dict[str, int]],
) -> None:
    """Every function a call runs, from the socket to the store's answers from memory, is compiled (but the
    allowed few): an interpreted helper on the call path costs its frames on every call, unseen."""
    _, interpreted = interpreted_per_40_calls
    unexpected = {k: n for k, n in interpreted.items() if k not in INTERPRETED_ALLOWED}
    assert unexpected == {}, f"interpreted sipfilter functions run for every call: {unexpected}"
