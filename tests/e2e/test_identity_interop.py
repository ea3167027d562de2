"""STIR/SHAKEN end to end with an independent implementation: Debian's secsipidx (libsecsipid, Go) verifies
what sipfilter signs and signs what sipfilter verifies, over real SIP (SIPp dialer and carrier), with a test
STI PKI (root, intermediate, leaf with TNAuthList) whose x5u chain a local HTTPS server serves. Each broken
PASSporT gets RFC 8224's answer; a carrier's STIR refusal is counted in /metrics.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sipfilter_provision import Deployment, deploy
from sipp_harness import SippFactory, SippRun, free_ports, metric_sum, sipfilter_available

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "identity"))
from sti_pki import StiPki, X5uServer, make_pki

SECSIPIDX = shutil.which("secsipidx")
_MISSING = sipfilter_available() or (
    None if SECSIPIDX else "secsipidx is not installed (scripts/setup --test)"
)
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

CALLER, CALLEE = "+33162000001", "+33612000001"
# The deployment's ALWAYS_OPEN rules with the e2e consents: these numbers are relayed unless identity says no.
OTHER_CALLEE = "+33612000002"


@dataclass
class Sti:
    pki: StiPki
    files: dict[str, Path]
    server: X5uServer
    url: str  # x5u of the leaf + intermediate
    rogue: StiPki  # a PKI sipfilter does not trust
    rogue_files: dict[str, Path]
    rogue_url: str


@pytest.fixture(scope="module")
def sti(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sti]:
    root = tmp_path_factory.mktemp("sti")
    pki, rogue = make_pki(name="e2e"), make_pki(name="rogue")
    server = X5uServer(root / "web", {"sti/e2e.pem": pki.chain_pem, "sti/rogue.pem": rogue.chain_pem}).start()
    try:
        yield Sti(pki, pki.write(root / "e2e"), server, server.url("sti/e2e.pem"), rogue,
                  rogue.write(root / "rogue"), server.url("sti/rogue.pem"))  # fmt: skip
    finally:
        server.stop()


def secsipidx(*args: str, sti: Sti) -> subprocess.CompletedProcess[str]:
    # Go reads the x5u web server's CA from SSL_CERT_FILE (the test web CA, not the system's).
    env = dict(os.environ, SSL_CERT_FILE=str(sti.server.ca_file))
    assert SECSIPIDX is not None
    return subprocess.run(
        [SECSIPIDX, *args], capture_output=True, text=True, timeout=30, env=env, check=False
    )


def secsipidx_sign(sti: Sti, *, orig: str = CALLER, dest: str = CALLEE, iat: float | None = None,
                   rogue: bool = False, x5u: str | None = None) -> str:  # fmt: skip
    """The PASSporT token of the Identity value secsipidx signs with the e2e (or rogue) leaf key. (The dialer
    scenario writes the header's parameters itself, exactly as secsipidx does: checked here.)"""
    files = sti.rogue_files if rogue else sti.files
    # -sign with parameters (not -sign-full): this version takes -iat into account only there.
    args = ["-sign", "-k", str(files["key"]), "-x5u", x5u or (sti.rogue_url if rogue else sti.url),
            "-orig-tn", orig.lstrip("+"), "-dest-tn", dest.lstrip("+"), "-attest", "A",
            "-orig-id", str(uuid.uuid4())]  # fmt: skip
    if iat is not None:
        args += ["-iat", str(int(iat))]
    out = secsipidx(*args, sti=sti)
    assert out.returncode == 0, out.stdout + out.stderr
    value = out.stdout.strip().splitlines()[-1]
    token, _, params = value.partition(";")
    assert token.count(".") == 2, out.stdout
    url = x5u or (sti.rogue_url if rogue else sti.url)
    assert params in ("", f"info=<{url}>;alg=ES256;ppt=shaken"), value
    return token


def secsipidx_check(sti: Sti, identity: str) -> subprocess.CompletedProcess[str]:
    """secsipidx's verification: x5u fetched over HTTPS, chain to the e2e root (-cert-verify 5: validity
    dates and a custom CA file; the intermediate comes with the leaf), iat within 60 s."""
    return secsipidx("-check", "-identity", identity, "-p", sti.url, "-expire", "60", "-cert-verify", "5",
                     "-ca-file", str(sti.files["root"]), "-timeout", "3", sti=sti)  # fmt: skip


@dataclass(frozen=True)
class Case:
    callee: str
    expected: str  # "relay" | "<code> <rule>"
    header: str  # "Identity", or another name to send none
    token: str
    x5u: str


def play(sipp: SippFactory, tmp_path: Path, deployment: Deployment, cases: list[Case], *,
         uas: str = "carrier_uas.xml") -> tuple[SippRun, SippRun]:  # fmt: skip
    carrier = sipp(
        uas, local_port=deployment.carrier_ports[0], calls=1_000_000, pause_ms=50, timeout_s=60
    ).start()
    carrier.wait_listening()
    lines = ["SEQUENTIAL"] + [
        f"{CALLER};{c.callee};{c.expected};{c.header};{c.token};{c.x5u};" for c in cases
    ]
    csv_file = tmp_path / "identity.csv"
    csv_file.write_text("\n".join(lines) + "\n", encoding="ascii")
    dialer = sipp("dialer_uac_identity.xml", local_port=free_ports(1)[0], remote=deployment.inside,
                  calls=len(cases), csv_file=csv_file, pause_ms=100, timeout_s=40, rate=5)
    dialer.start()
    run = dialer.wait()
    return run, carrier.finish(grace_s=15)


def carrier_identities(run: SippRun) -> list[str]:
    """The Identity header values the carrier received, in order."""
    log = next(run.workdir.glob("*_messages.log")).read_text(errors="replace")
    return [
        line.split(":", 1)[1].strip() for line in log.splitlines() if line.lower().startswith("identity:")
    ]


def outcomes(run: SippRun) -> list[tuple[int, str | None]]:
    return [(o.code, o.problem()) for o in run.outcomes]


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[list[Deployment]]:
    made: list[Deployment] = []
    try:
        yield made
    finally:
        for d in made:
            d.sipfilter.stop()


def test_secsipidx_verifies_what_sipfilter_signs(sipp: SippFactory, tmp_path: Path, sti: Sti,
                                                 deployed: list[Deployment]) -> None:  # fmt: skip
    identity = {"sign": {"key": str(sti.files["key"]), "x5u": sti.url, "cert": str(sti.files["leaf"])}}
    deployment = deploy(tmp_path / "sf", trunk={"identity": identity})
    deployed.append(deployment)
    dialer, carrier = play(sipp, tmp_path, deployment, [Case(CALLEE, "relay", "X-Unsigned", "none", "none")])
    assert outcomes(dialer) == [(200, None)], dialer.summary()
    (value,) = carrier_identities(carrier)
    checked = secsipidx_check(sti, value)
    assert checked.returncode == 0 and checked.stdout.strip().endswith("ok"), checked.stdout
    # The check can fail: the same value with another destination in its claims does not verify.
    token, _, params = value.partition(";")
    head, _, sig = token.split(".")
    forged_payload = secsipidx_sign(sti, dest=OTHER_CALLEE).split(".")[1]
    forged = secsipidx_check(sti, f"{head}.{forged_payload}.{sig};{params}")
    assert forged.returncode != 0 and "not-ok" in forged.stdout, forged.stdout
    assert metric_sum(deployment.sipfilter.metrics(), "sipfilter_identity_signed_total", attest="B") == 1


def test_sipfilter_verifies_what_secsipidx_signs_and_answers_the_rfc_codes(
    sipp: SippFactory, tmp_path: Path, sti: Sti, deployed: list[Deployment]
) -> None:
    verify: dict[str, Any] = {"ca": str(sti.files["root"]), "x5u_tls_ca": str(sti.server.ca_file),
                              "require": True, "x5u_timeout_s": 1}  # fmt: skip
    deployment = deploy(tmp_path / "sf", trunk={"identity": {"verify": verify}})
    deployed.append(deployment)
    good = secsipidx_sign(sti)
    head, _, sig = good.split(".")
    tampered = f"{head}.{secsipidx_sign(sti, dest=OTHER_CALLEE).split('.')[1]}.{sig}"
    closed = f"https://127.0.0.1:{free_ports(1)[0]}/sti.pem"  # nothing listens there
    cases = [
        Case(CALLEE, "relay", "Identity", good, sti.url),
        Case(OTHER_CALLEE, "438 identity.invalid", "Identity", tampered, sti.url),  # signature broken
        Case(CALLEE, "403 identity.stale", "Identity", secsipidx_sign(sti, iat=time.time() - 600), sti.url),
        Case(OTHER_CALLEE, "438 identity.invalid", "Identity", good, sti.url),  # dest is not this callee
        Case(CALLEE, "436 identity.bad-info", "Identity", secsipidx_sign(sti, x5u=closed), closed),
        Case(CALLEE, "437 identity.unsupported-credential", "Identity", secsipidx_sign(sti, rogue=True),
             sti.rogue_url),
        Case(CALLEE, "428 identity.missing", "X-Unsigned", "none", "none"),
    ]  # fmt: skip
    fetched_before = sti.server.hits.get("sti/e2e.pem", 0)
    dialer, carrier = play(sipp, tmp_path, deployment, cases)
    assert [o.problem() for o in dialer.outcomes] == [None] * len(cases), dialer.summary()
    assert carrier.invites == 1
    assert carrier_identities(carrier) == [f"{good};info=<{sti.url}>;alg=ES256;ppt=shaken"]  # untouched
    metrics = deployment.sipfilter.metrics()
    for result, n in (("passed", 1), ("identity.invalid", 2), ("identity.stale", 1), ("identity.bad-info", 1),
                      ("identity.unsupported-credential", 1), ("identity.missing", 1)):  # fmt: skip
        assert metric_sum(metrics, "sipfilter_identity_verifications_total", result=result) == n, result
    assert sti.server.hits["sti/e2e.pem"] == fetched_before + 1  # fetched once, then from memory


def test_a_carrier_refusing_the_identity_is_counted(sipp: SippFactory, tmp_path: Path, sti: Sti,
                                                    deployed: list[Deployment]) -> None:  # fmt: skip
    deployment = deploy(tmp_path / "sf")
    deployed.append(deployment)
    target = f"sip:127.0.0.1:{deployment.carrier_ports[0]}"
    before = metric_sum(deployment.sipfilter.metrics(), "sipfilter_carrier_identity_refusals_total",
                        trunk="dialer", target=target, code="438")  # fmt: skip
    assert before == 0  # declared at start
    case = Case(CALLEE, "438", "Identity", secsipidx_sign(sti), sti.url)
    dialer, _ = play(sipp, tmp_path, deployment, [case], uas="carrier_uas_identity_refused.xml")
    assert outcomes(dialer) == [(438, None)], dialer.summary()
    assert "STIR;cause=438" in dialer.outcomes[0].reason  # relayed to the dialer as the carrier sent it
    after = metric_sum(deployment.sipfilter.metrics(), "sipfilter_carrier_identity_refusals_total",
                       trunk="dialer", target=target, code="438")  # fmt: skip
    assert after == 1
