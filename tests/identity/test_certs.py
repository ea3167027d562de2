"""STI certificates: x5u documents, chains to the configured roots, TNAuthList (RFC 8226)."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import Store
from sti_pki import make_pki, pem, tn_auth_list_der

from sipfilter.identity.certs import (
    CredentialError,
    TnAuthList,
    load_anchors,
    load_document,
    parse_tn_auth_list,
    verify_chain,
)


@pytest.fixture(scope="module")
def pki():  # type: ignore[no-untyped-def]
    return make_pki()


def test_a_chain_to_the_configured_root_verifies(pki) -> None:  # type: ignore[no-untyped-def]
    certs = load_document(pki.chain_pem)
    cred = verify_chain(Store([pki.root]), certs, time.time())
    assert cred.key == pki.leaf_key.public_key()
    assert cred.tn_auth == TnAuthList(spcs=("709J",))
    assert cred.valid_from <= time.time() < cred.valid_until
    assert cred.valid_until <= pki.leaf.not_valid_after_utc.timestamp()
    assert "STI leaf" in cred.subject


def test_der_documents_and_bundles(pki) -> None:  # type: ignore[no-untyped-def]
    der = pki.leaf.public_bytes(serialization.Encoding.DER)
    assert load_document(der) == [pki.leaf]
    assert load_anchors(pem(pki.root, pki.inter)) == [pki.root, pki.inter]
    for junk in (
        b"",
        b"<html>not found</html>",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ):
        with pytest.raises(CredentialError) as err:
            load_document(junk)
        assert err.value.rule == "identity.bad-info"


def test_another_root_is_not_trusted(pki) -> None:  # type: ignore[no-untyped-def]
    other = make_pki(name="other")
    with pytest.raises(CredentialError) as err:
        verify_chain(Store([other.root]), load_document(pki.chain_pem), time.time())
    assert err.value.rule == "identity.unsupported-credential" and "not trusted" in err.value.reason
    # Without its intermediate the leaf does not chain either.
    with pytest.raises(CredentialError):
        verify_chain(Store([pki.root]), [pki.leaf], time.time())


def test_expired_and_future_certificates(pki) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CredentialError, match="not trusted"):
        verify_chain(Store([pki.root]), load_document(pki.chain_pem), time.time() + 60 * 86400)
    expired = make_pki(leaf_days=-1, leaf_start_days=10)
    with pytest.raises(CredentialError):
        verify_chain(Store([expired.root]), load_document(expired.chain_pem), time.time())


def test_leaf_without_tn_auth_list_or_with_another_key_type() -> None:
    bare = make_pki(tn_auth=False)
    with pytest.raises(CredentialError, match="TNAuthList"):
        verify_chain(Store([bare.root]), load_document(bare.chain_pem), time.time())
    rsa = make_pki(rsa_leaf=True)
    with pytest.raises(CredentialError, match="P-256"):
        verify_chain(Store([rsa.root]), load_document(rsa.chain_pem), time.time())


def test_a_ca_certificate_cannot_sign_passports(pki) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CredentialError):
        verify_chain(Store([pki.root]), [pki.inter], time.time())


def test_tn_auth_list_forms() -> None:
    assert parse_tn_auth_list(tn_auth_list_der(["709J"])) == TnAuthList(spcs=("709J",))
    tn = parse_tn_auth_list(tn_auth_list_der(ranges=[("33162000000", 1000)], numbers=["33948000001"]))
    assert tn == TnAuthList(ranges=(("33162000000", 1000),), numbers=("33948000001",))
    assert tn.covers("33162000999") and tn.covers("33162000000") and tn.covers("33948000001")
    assert not tn.covers("33162001000") and not tn.covers("3316200099") and not tn.covers("33948000002")
    # A service provider code vouches for the provider's numbers, which the certificate does not list.
    assert TnAuthList(spcs=("709J",)).covers("33612000001")
    long_range = tn_auth_list_der(ranges=[("33162000000", 70000)])  # a count needing three bytes
    assert parse_tn_auth_list(long_range).ranges == (("33162000000", 70000),)


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x30\x00",
        b"\x31\x00",
        b"\x30\x04\xa3\x02\x16\x00",
        b"\x30\x05\xa0\x03\x16\x05ab",
        b"\x30\x06\xa0\x04\x0c\x02ab",
        b"\x30\x03\xa0\x01",
    ],
)
def test_malformed_tn_auth_lists(der: bytes) -> None:
    with pytest.raises(ValueError):
        parse_tn_auth_list(der)
