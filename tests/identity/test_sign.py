"""The authentication service: attestation from the trunk's authorised caller IDs, one origid per call."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from sti_pki import make_pki

from sipfilter.identity.passport import decode, parse_identity, signature_valid
from sipfilter.identity.settings import SignSettings
from sipfilter.identity.sign import Signer, SignError
from sipfilter.policy.caller_id import CallerIdRules, Category
from sipfilter.policy.numbers import Number

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policy"))
from memstore import MemoryStore

PKI = make_pki()
X5U = "https://cert.example.org/sti.pem"
NPV = Number("sip:+33162000001@d", "+33162000001", "e164")
OTHER_NPV = Number("sip:+33948000001@d", "+33948000001", "e164")
CALLEE = Number("sip:0612000001@s", "+33612000001", "e164")


def rules(*, inline: tuple[str, ...] | None = None, listed: str | None = None) -> CallerIdRules:
    other = Category("other", False, "caller-id.not-npv")
    return CallerIdRules({}, (), other, other, frozenset(), False, listed, inline)


def signer(attest: str = "B", **kw: tuple[str, ...] | str | None) -> Signer:
    return Signer(SignSettings(Path("k.pem"), X5U, attest, private_key=PKI.leaf_key), rules(**kw))  # type: ignore[arg-type]


def test_signed_identity_verifies_with_the_certificate_key() -> None:
    now = time.time()
    signed = signer().sign(NPV, CALLEE, None, now)
    h = parse_identity(signed.value)
    assert (h.info, h.alg, h.ppt) == (X5U, "ES256", "shaken")
    p = decode(h.token)
    assert (p.orig_tn, p.dest_tns, p.iat, p.x5u) == ("33162000001", ("33612000001",), int(now), X5U)
    assert signature_valid(p, PKI.leaf.public_key())  # type: ignore[arg-type]


def test_origid_is_new_for_every_call() -> None:
    s = signer()
    ids = {
        decode(parse_identity(s.sign(NPV, CALLEE, None, time.time()).value).token).origid for _ in range(20)
    }
    assert len(ids) == 20


def test_attestation_a_only_for_authorised_numbers() -> None:
    assert signer().sign(NPV, CALLEE, None, 0).attest == "B"  # no list: the configured level
    assert signer("C").sign(NPV, CALLEE, None, 0).attest == "C"
    inline = signer(inline=("+33162*",))
    assert inline.sign(NPV, CALLEE, None, 0).attest == "A"
    assert inline.sign(OTHER_NPV, CALLEE, None, 0).attest == "B"
    store = MemoryStore()
    store.add_list("contract-numbers", {"+33948000001"})
    listed = signer(listed="contract-numbers")
    assert listed.sign(OTHER_NPV, CALLEE, store, 0).attest == "A"
    assert listed.sign(NPV, CALLEE, store, 0).attest == "B"
    store.fail = True  # the store cannot answer: never a full attestation on a guess
    assert listed.sign(OTHER_NPV, CALLEE, store, 0).attest == "B"
    assert signer(listed="never-imported").sign(OTHER_NPV, CALLEE, MemoryStore(), 0).attest == "B"


def test_numbers_that_cannot_be_signed() -> None:
    with pytest.raises(SignError, match="caller-not-e164"):
        signer().sign(Number("sip:anonymous@x", "", "anonymous"), CALLEE, None, 0)
    with pytest.raises(SignError, match="caller-not-e164"):
        signer().sign(Number("sip:3180@x", "3180", "short"), CALLEE, None, 0)
    with pytest.raises(SignError, match="callee-not-e164"):
        signer().sign(NPV, Number("sip:x@y", "", "invalid"), None, 0)
