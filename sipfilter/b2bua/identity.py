"""What the B2BUA does with STIR/SHAKEN on a call: verify the dialer's Identity before the decision, keep,
drop or sign the B-leg's Identity, count the carrier's STIR verdicts (RFC 8224 codes, RFC 9410 Reason).

Called from core.py at those three points; the per-trunk objects are built once per config load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sipfilter.b2bua.facts import CallIdentities, from_user
from sipfilter.config import Config
from sipfilter.identity.sign import Signer, SignError
from sipfilter.identity.verify import Verifier
from sipfilter.identity.x5u import X5uCache, https_fetcher
from sipfilter.policy.numbers import E164
from sipfilter.sip.message import Request, Response

# RFC 8224 §6.2.2 answers; a carrier refusing for another reason names STIR in a Reason header (RFC 9410).
STIR_STATUSES = frozenset({428, 436, 437, 438})
STIR_CODES = ("428", "436", "437", "438", "other")


@dataclass(slots=True)
class TrunkIdentity:
    """A trunk's `identity:` compiled: who verifies its INVITEs, who signs its B-legs (either may be None)."""

    trunk: str
    verifier: Verifier | None
    signer: Signer | None

    def observe(self, obs: Any) -> None:
        """Report x5u fetches to the B2BUA's observer (set again when the runtime is swapped)."""
        if self.verifier is not None:
            self.verifier.cache.on_fetch = obs.x5u_fetch


def compile_identity(config: Config,
                     old: Mapping[str, TrunkIdentity] | None = None) -> dict[str, TrunkIdentity]:  # fmt: skip
    """Trunk name → TrunkIdentity for every trunk with an `identity:` section. The x5u documents fetched
    before a reload are kept while the x5u web servers are trusted the same way."""
    out: dict[str, TrunkIdentity] = {}
    for name, trunk in config.trunks.items():
        settings = trunk.identity
        if settings is None:
            continue
        rules = config.rules[name]
        verifier = None
        if settings.verify is not None:
            v = settings.verify
            cache = X5uCache(https_fetcher(v.x5u_timeout_s, v.tls_context), ttl_s=v.x5u_cache_ttl_s,
                             failure_ttl_s=v.x5u_failure_ttl_s)  # fmt: skip
            prev = old.get(name) if old is not None else None
            if prev is not None and prev.verifier is not None and \
                    prev.verifier.settings.x5u_tls_ca == v.x5u_tls_ca:  # fmt: skip
                cache.adopt(prev.verifier.cache)
            verifier = Verifier(name, v, rules.identity, cache)
        signer = Signer(settings.sign, rules.caller_id) if settings.sign is not None else None
        out[name] = TrunkIdentity(name, verifier, signer)
    return out


# -- the B-leg's Identity ---------------------------------------------------------------------------------


def numbers_cross_unchanged(msg: Request, ids: CallIdentities, pai_crosses: bool) -> bool:
    """True when the numbers an Identity of this INVITE binds (From or P-Asserted-Identity for `orig`, To
    and Request-URI for `dest`) reach the carrier as the dialer sent them. The B-leg writes each from the
    user part the policy read (b2bua/facts.py); it differs from the dialer's where a caller goes out as
    anonymous, an identity without a number is left out, or the dialer's To named another user than its
    Request-URI (the B-leg's To carries the Request-URI's)."""
    caller = ids.caller
    if caller.user is None or from_user(ids) != caller.user:
        return False
    callee = ids.callee.user
    to_uri = msg.to.uri
    if not callee or str(getattr(to_uri, "user", None) or getattr(to_uri, "number", None) or "") != callee:
        return False
    for asserted in ids.asserted:
        if asserted.user is None or (not pai_crosses and asserted.user != caller.user):
            return False  # dropped, or does not cross while `orig` may be its number
    return True


def b_leg_identity(ti: TrunkIdentity | None, msg: Request, ids: CallIdentities, passes_identity: bool,
                   pai_crosses: bool, store: Any, now: float, obs: Any,
                   trunk: str) -> tuple[str, ...] | None:  # fmt: skip
    """The Identity lines of the B-leg INVITE, or None when the dialer's cross as the pass list says.

    The dialer's signature is never broken: it crosses untouched while the numbers it binds cross unchanged;
    otherwise it is dropped (counted), or replaced by ours when the trunk signs. A signing trunk signs the
    INVITEs that come without one."""
    incoming = passes_identity and "Identity" in msg.headers
    signer = ti.signer if ti is not None else None
    if incoming:
        if numbers_cross_unchanged(msg, ids, pai_crosses):
            return None
        if signer is None:
            obs.identity_dropped(trunk)
            return ()
    elif signer is None:
        return None
    facts = ids.facts
    asserted = [n for n in facts.asserted if n.kind == E164] if pai_crosses else []
    orig = asserted[0] if asserted else facts.caller
    try:
        signed = signer.sign(orig, facts.callee, store, now)
    except SignError as exc:
        obs.identity_not_signed(trunk, str(exc))
        if incoming:
            obs.identity_dropped(trunk)
        return () if incoming else None
    obs.identity_signed(trunk, signed.attest)
    return (f"Identity: {signed.value}",)


# -- the carrier's verdicts -------------------------------------------------------------------------------


def carrier_verdict(msg: Response, status: int) -> str | None:
    """The STIR code of a carrier's answer to our INVITE: its status when RFC 8224 defines it for identity
    failures, else the cause of a `Reason: STIR` (RFC 9410), "other" for another cause; None if neither."""
    code = str(status) if status in STIR_STATUSES else ""
    if "Reason" in msg.headers:
        for value in msg.headers.get_all("Reason"):
            protocol, _, params = value.partition(";")
            if protocol.strip().upper() != "STIR":
                continue
            cause = ""
            for param in params.split(";"):
                key, _, val = param.partition("=")
                if key.strip().lower() == "cause":
                    cause = val.strip().strip('"')
            return code or (cause if cause in STIR_CODES else "other")
    return code or None


def count_carrier_verdict(obs: Any, trunk: str, target: str, msg: Response, status: int) -> None:
    """Count a carrier's STIR verdict on the B-leg INVITE: refusals (final >= 300) and `Reason: STIR` on
    answers that let the call go on."""
    code = carrier_verdict(msg, status)
    if code is not None:
        obs.carrier_identity(trunk, target, code, status >= 300)
