"""The verification service of a trunk (RFC 8224 §6.2, RFC 8588, ATIS-1000074): the dialer's SHAKEN PASSporT
against the call's numbers, the clock and the certificate its x5u names, as an identity.* finding.

Checks run from memory; an x5u never fetched (or expired from the cache) is fetched once, shared by every
call waiting for it, within `x5u_timeout_s`. The finding is handed to the policy engine as a rule outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.x509.verification import Store

from sipfilter.identity.certs import Credential, CredentialError, verify_chain
from sipfilter.identity.passport import (
    PPT,
    Passport,
    PassportError,
    canonical_tn,
    decode,
    parse_identity,
    signature_valid,
)
from sipfilter.identity.settings import VerifySettings
from sipfilter.identity.x5u import Document, X5uCache
from sipfilter.policy.facts import CallFacts
from sipfilter.policy.identity import (
    BAD_INFO_RULE,
    CREDENTIAL_RULE,
    INVALID_RULE,
    MISSING_RULE,
    STALE_RULE,
    IdentityFinding,
    IdentityRules,
)
from sipfilter.policy.numbers import E164

MAX_IDENTITY_HEADERS = 8  # RFC 8224 allows several (other ppt values); a flood of them is not checked
_NONE = IdentityFinding("", "", present=False)


class Verifier:
    """One trunk's `identity.verify`, compiled once per config load (its x5u cache outlives reloads)."""

    def __init__(self, trunk: str, settings: VerifySettings, rules: IdentityRules, cache: X5uCache) -> None:
        self.trunk = trunk
        self.settings = settings
        self.max_age_s = rules.max_age_s
        self.cache = cache
        self._anchors = Store(list(settings.anchors))
        self._enforce = settings.mode == "enforce"
        self._allowed = settings.x5u_allowed
        # x5u URL → (the document it was computed from, its verified chain or why not): a chain is checked
        # once per fetched document, not per call.
        self._credentials: dict[str, tuple[Document, Credential | CredentialError]] = {}

    # -- the call path ----------------------------------------------------------------------------------

    async def decide(self, policy: Any, facts: CallFacts, msg: Any, store: Any, now: float, obs: Any) -> Any:
        """Verify, then let the policy decide with the finding (one coroutine: stepped inline by the B2BUA,
        it suspends only when an x5u must be fetched)."""
        values = msg.headers.get_lines("Identity")
        found = self.check(values, facts, now)
        if not isinstance(found, IdentityFinding):
            waits = [asyncio.shield(self.cache.fetch(url)) for url in found]
            docs = await asyncio.gather(*waits)
            found = self.check(values, facts, now, {doc.url: doc for doc in docs})
            if not isinstance(found, IdentityFinding):  # every URL was just fetched: cannot happen
                found = self._fail(BAD_INFO_RULE, "x5u certificate not available")
        obs.identity_verified(self.trunk, found.rule or ("passed" if found.present else "absent"))
        return await policy.decide(facts, store, identity=found)

    def check(self, values: Sequence[str], facts: CallFacts, now: float,
              fetched: Mapping[str, Document] | None = None) -> IdentityFinding | list[str]:  # fmt: skip
        """The finding for these Identity header values, or the x5u URLs to fetch before there can be one."""
        failure: IdentityFinding | None = None
        need: list[str] = []
        for value in values[:MAX_IDENTITY_HEADERS]:
            try:
                header = parse_identity(value)
                if header.ppt is not None and header.ppt.lower() != PPT:
                    continue  # another PASSporT extension (div, rcd…): not a caller attestation
                passport = decode(header.token)
            except PassportError as exc:
                failure = failure or self._fail(exc.rule, exc.reason)
                continue
            if passport.ppt != PPT:
                continue
            result = self._one(passport, facts, now, fetched)
            if isinstance(result, str):
                need.append(result)
            elif not result.rule:
                return result
            else:
                failure = failure or result
        if need:
            return need
        if failure is not None:
            return failure
        if self.settings.require:
            return self._fail(MISSING_RULE, "no Identity header with a SHAKEN PASSporT", present=False)
        return _NONE

    def _one(self, p: Passport, facts: CallFacts, now: float,
             fetched: Mapping[str, Document] | None) -> IdentityFinding | str:  # fmt: skip
        """One PASSporT's finding, or its x5u URL when the certificate must be fetched first."""
        if self._allowed and not p.x5u.startswith(self._allowed):
            return self._fail(BAD_INFO_RULE, f"x5u {p.x5u[:120]} is not in identity.verify.x5u_allowed")
        age = now - p.iat
        if abs(age) > self.max_age_s:
            when = f"{age:.0f} s old" if age > 0 else f"{-age:.0f} s in the future"
            return self._fail(STALE_RULE, f"Stale Date: PASSporT iat is {when} (at most {self.max_age_s} s)")
        orig_tn = canonical_tn(p.orig_tn)
        # SHAKEN binds `orig` to P-Asserted-Identity when there is one, else to From.
        callers = [n for n in facts.asserted if n.kind == E164]
        if not callers and facts.caller.kind == E164:
            callers = [facts.caller]
        if not orig_tn or orig_tn not in [canonical_tn(n.e164) for n in callers]:
            shown = ", ".join(n.e164 for n in callers) or "not a number"
            return self._fail(INVALID_RULE, f"PASSporT orig {p.orig_tn[:32]!r} is not the caller ({shown})")
        callee = facts.callee
        dests = [canonical_tn(t) for t in p.dest_tns]
        if callee.kind != E164 or canonical_tn(callee.e164) not in dests:
            shown = ", ".join(t[:32] for t in p.dest_tns[:3])
            called = callee.e164 or callee.kind
            return self._fail(INVALID_RULE, f"PASSporT dest {shown} is not the callee ({called})")
        doc = fetched.get(p.x5u) if fetched is not None else None
        if doc is None:
            doc = self.cache.get(p.x5u, now)
            if doc is None:
                return p.x5u
        cred = self._credential(doc, now)
        if isinstance(cred, CredentialError):
            return self._fail(cred.rule, cred.reason)
        if not cred.valid_from <= now < cred.valid_until:
            why = f"certificate at {p.x5u[:120]} is not valid now ({cred.subject})"
            return self._fail(CREDENTIAL_RULE, why)
        if not cred.tn_auth.covers(orig_tn):
            return self._fail(CREDENTIAL_RULE, f"certificate's TNAuthList does not cover {p.orig_tn[:32]}")
        if not signature_valid(p, cred.key):
            return self._fail(INVALID_RULE, "the PASSporT's signature does not verify")
        return IdentityFinding("", "", attest=p.attest)

    def _credential(self, doc: Document, now: float) -> Credential | CredentialError:
        hit = self._credentials.get(doc.url)
        if hit is not None and hit[0] is doc:
            return hit[1]
        result: Credential | CredentialError
        if doc.error:
            result = CredentialError(BAD_INFO_RULE, doc.error)
        else:
            try:
                result = verify_chain(self._anchors, doc.certs, now)
            except CredentialError as exc:
                result = exc
        if len(self._credentials) >= 2 * self.cache.max_entries:
            self._credentials.clear()
        self._credentials[doc.url] = (doc, result)
        return result

    def _fail(self, rule: str, reason: str, *, present: bool = True) -> IdentityFinding:
        return IdentityFinding(rule, reason, enforce=self._enforce, present=present)
