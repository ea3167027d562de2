"""Benchmark of STIR/SHAKEN on the call path: µs per signature (a signing trunk's B-leg), per verification
of a PASSporT whose x5u certificate is cached (a verifying trunk's INVITE), and what is done once per x5u
document (chain verification). The raw ES256 sign/verify of `cryptography` are printed as the floor.

Prints figures; not part of the test suite. Run: .venv/bin/python bench/identity.py [--n 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "identity"))

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.hashes import SHA256  # noqa: E402
from cryptography.x509.verification import Store  # noqa: E402
from sti_pki import make_pki  # noqa: E402

from sipfilter.identity.certs import load_document, verify_chain  # noqa: E402
from sipfilter.identity.passport import decode, parse_identity  # noqa: E402
from sipfilter.identity.settings import SignSettings, VerifySettings  # noqa: E402
from sipfilter.identity.sign import Signer  # noqa: E402
from sipfilter.identity.verify import Verifier  # noqa: E402
from sipfilter.identity.x5u import X5uCache  # noqa: E402
from sipfilter.policy.caller_id import CallerIdRules, Category  # noqa: E402
from sipfilter.policy.facts import CallFacts  # noqa: E402
from sipfilter.policy.identity import IdentityRules  # noqa: E402
from sipfilter.policy.numbers import Number  # noqa: E402

X5U = "https://certs.example.org/sti.pem"
CALLER = Number("sip:+33162000001@d", "+33162000001", "e164")
CALLEE = Number("sip:+33612000001@s", "+33612000001", "e164")


def per_call_us(fn: Callable[[], object], n: int, rounds: int) -> tuple[float, float]:
    """(median, best) µs per call over `rounds` rounds of `n` calls."""
    fn()
    results = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        results.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(results), min(results)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="calls per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pki = make_pki()
    other = Category("other", False, "caller-id.not-npv")
    listed = CallerIdRules({}, (), other, other, frozenset(), False, None, ("+33162*",))
    signer = Signer(SignSettings(Path("k"), X5U, "B", private_key=pki.leaf_key), listed)

    async def fetch(url: str) -> bytes:
        return pki.chain_pem

    cache = X5uCache(fetch, ttl_s=3600, failure_ttl_s=10)
    verifier = Verifier("bench", VerifySettings(Path("r"), anchors=(pki.root,)), IdentityRules(60), cache)
    await cache.fetch(X5U)  # cached, as every call after the first finds it
    now = time.time()
    facts = CallFacts("bench", now, CALLER, (), frozenset(), CALLEE)
    value = signer.sign(CALLER, CALLEE, None, now).value
    assert verifier.check([value], facts, now).rule == ""  # type: ignore[union-attr]
    certs = load_document(pki.chain_pem)
    anchors = Store([pki.root])
    data = b"x" * 300
    sig = pki.leaf_key.sign(data, ec.ECDSA(SHA256()))
    public = pki.leaf_key.public_key()
    rows = [
        ("sign: one PASSporT + Identity value (attest from an inline list)",
         lambda: signer.sign(CALLER, CALLEE, None, now)),
        ("verify: Identity of an INVITE, certificate cached", lambda: verifier.check([value], facts, now)),
        ("  of which parse + decode of the token", lambda: decode(parse_identity(value).token)),
        ("once per x5u document: chain verification", lambda: verify_chain(anchors, certs, now)),
        ("floor: ES256 sign (cryptography)", lambda: pki.leaf_key.sign(data, ec.ECDSA(SHA256()))),
        ("floor: ES256 verify (cryptography)", lambda: public.verify(sig, data, ec.ECDSA(SHA256()))),
    ]  # fmt: skip
    print(f"{'operation':66} {'median µs':>10} {'best µs':>9}")
    for name, fn in rows:
        median, best = per_call_us(fn, args.n, args.rounds)
        print(f"{name:66} {median:10.1f} {best:9.1f}")


if __name__ == "__main__":
    asyncio.run(main())
