"""A trunk's `identity:` section: read when the config loads, every mistake named by file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from sti_pki import StiPki, key_pem, make_pki, pem

from sipfilter.config import ConfigError
from sipfilter.configure import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "sipfilter.yaml"
ANCHOR = "    on_targets_down: try # try | reject\n"


@pytest.fixture(scope="module")
def pki() -> StiPki:
    return make_pki()


@pytest.fixture
def files(tmp_path: Path, pki: StiPki) -> Path:
    written = pki.write(tmp_path / "sti")
    (tmp_path / "sti" / "rsa.key").write_bytes(key_pem(make_pki(rsa_leaf=True).leaf_key))
    (tmp_path / "sti" / "other.pem").write_bytes(pem(make_pki(name="other").leaf))
    return written["root"].parent


def config_with(tmp_path: Path, identity: str) -> tuple[Path, int]:
    """The example config with `identity:` (YAML lines under the trunk, 4 spaces deep) after on_targets_down;
    returns its path and the line where the section starts."""
    text = EXAMPLE.read_text().replace("rules/fr.yaml", str(ROOT / "config" / "rules" / "fr.yaml"))
    assert ANCHOR in text
    section = "    identity:\n" + "".join(f"      {line}\n" for line in identity.strip("\n").split("\n"))
    text = text.replace(ANCHOR, ANCHOR + section, 1)
    path = tmp_path / "sipfilter.yaml"
    path.write_text(text)
    return path, text[: text.index(section)].count("\n") + 1


def test_verify_and_sign_load(tmp_path: Path, files: Path) -> None:
    path, _ = config_with(
        tmp_path,
        f"""
verify: {{ ca: {files}/root.pem, mode: monitor, require: true, x5u_timeout_s: 1.5,
          x5u_allowed: ["https://certs.example/"] }}
sign: {{ key: {files}/leaf.key, x5u: "https://certs.example/sti.pem", attest: C, cert: {files}/leaf.pem }}
""",
    )
    ident = load_config(path).trunks["dialer"].identity
    assert ident is not None and ident.verify is not None and ident.sign is not None
    v, s = ident.verify, ident.sign
    assert (v.mode, v.require, v.x5u_timeout_s, v.x5u_cache_ttl_s, v.x5u_allowed) == (
        "monitor",
        True,
        1.5,
        3600,
        ("https://certs.example/",),
    )
    assert len(v.anchors) == 1 and v.tls_context is not None
    assert (s.x5u, s.attest, s.key) == ("https://certs.example/sti.pem", "C", files / "leaf.key")
    assert s.private_key is not None


@pytest.mark.parametrize(
    ("identity", "line", "field", "words"),
    [
        ("{{}}", 1, "trunks.dialer.identity", "expected `verify`, `sign` or both"),
        ("verifi: {{ ca: {f}/root.pem }}", 1, "trunks.dialer.identity.verifi", "did you mean 'verify'"),
        ("verify: {{ mode: enforce }}", 1, "trunks.dialer.identity.verify.ca", "missing required field"),
        ("verify: {{ ca: {f}/nope.pem }}", 1, "trunks.dialer.identity.verify.ca", "no such file"),
        ("verify: {{ ca: {f}/leaf.key }}", 1, "trunks.dialer.identity.verify.ca", "STI root certificates"),
        ("verify:\n  ca: {f}/root.pem\n  x5u_timeout_s: 30", 3, "x5u_timeout_s", "must be <= 10"),
        (
            "verify:\n  ca: {f}/root.pem\n  x5u_allowed: [http://certs.example/]",
            3,
            "x5u_allowed",
            "https:// URL",
        ),
        ("verify:\n  ca: {f}/root.pem\n  mode: audit", 3, "identity.verify.mode", "enforce, monitor"),
        ("sign:\n  key: {f}/root.pem\n  x5u: https://c.example/x.pem", 2, "identity.sign.key", "private key"),
        ("sign:\n  key: {f}/rsa.key\n  x5u: https://c.example/x.pem", 2, "identity.sign.key", "EC P-256"),
        ("sign:\n  key: {f}/leaf.key\n  x5u: http://c.example/x.pem", 3, "identity.sign.x5u", "https:// URL"),
        (
            "sign:\n  key: {f}/leaf.key\n  x5u: 'https://c.example/x y.pem'",
            3,
            "identity.sign.x5u",
            "SIP header",
        ),
        (
            "sign:\n  key: {f}/leaf.key\n  x5u: https://c.example/x.pem\n  attest: A",
            4,
            "identity.sign.attest",
            "expected one of B, C",
        ),
        (
            "sign:\n  key: {f}/leaf.key\n  x5u: https://c.example/x.pem\n  cert: {f}/other.pem",
            4,
            "identity.sign.cert",
            "does not hold the public key",
        ),
    ],
)
def test_mistakes_name_file_line_and_field(
    tmp_path: Path, files: Path, identity: str, line: int, field: str, words: str
) -> None:
    path, start = config_with(tmp_path, identity.format(f=files))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    e = err.value
    assert e.file == str(path) and field in e.field and words in e.message, str(e)
    assert e.line == start + line, str(e)


def test_the_signing_key_is_read_again_on_reload(tmp_path: Path, files: Path) -> None:
    path, _ = config_with(tmp_path, f"sign: {{ key: {files}/leaf.key, x5u: 'https://c.example/x.pem' }}")
    first = load_config(path).trunks["dialer"].identity
    new_key = make_pki().leaf_key
    (files / "leaf.key").write_bytes(key_pem(new_key))
    again = load_config(path).trunks["dialer"].identity
    assert first is not None and again is not None and first.sign is not None and again.sign is not None
    assert first.sign.private_key is not None and again.sign.private_key is not None
    assert again.sign.private_key.public_key() == new_key.public_key()
    assert first.sign.private_key.public_key() != new_key.public_key()
    (files / "leaf.key").write_text("garbage")
    with pytest.raises(ConfigError, match="private key"):  # a reload refused: the running config stays
        load_config(path)
