"""The authentication service of a trunk that signs (RFC 8224 §5, RFC 8588): one SHAKEN PASSporT per call.

Attestation A only for numbers of the trunk's authorised caller-ID list (the contact center proved it may
use them), the configured level otherwise. The key is the one the config loaded (re-read on SIGHUP).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sipfilter.identity.passport import canonical_tn, identity_value, protected_header, sign
from sipfilter.identity.settings import SignSettings
from sipfilter.policy.caller_id import CallerIdRules, authorised
from sipfilter.policy.numbers import E164, Number


class SignError(ValueError):
    """This call cannot be signed; the message is the metric's reason (caller-not-e164, …)."""


@dataclass(frozen=True, slots=True)
class Signed:
    value: str  # the Identity header value
    attest: str


class Signer:
    def __init__(self, settings: SignSettings, caller_ids: CallerIdRules) -> None:
        if settings.private_key is None:
            raise ValueError("identity.sign has no key loaded")
        self._key = settings.private_key
        self.x5u = settings.x5u
        self.default_attest = settings.attest
        self._header = protected_header(settings.x5u)  # the same for every call: encoded once
        self._caller_ids = caller_ids
        self._has_list = caller_ids.authorised_list is not None or caller_ids.authorised_inline is not None

    def attest_for(self, caller: Number, store: Any) -> str:
        """A for a number the trunk's authorised caller-ID list holds, else the configured level. A store
        that cannot answer gives the configured level: never a full attestation on a guess."""
        if not self._has_list:
            return self.default_attest
        try:
            ok, _ = authorised(self._caller_ids, caller, store)
        except Exception:
            return self.default_attest
        return "A" if ok else self.default_attest

    def sign(self, orig: Number, dest: Number, store: Any, now: float) -> Signed:
        """The Identity header value for a call from `orig` to `dest` (the policy's normalised numbers)."""
        if orig.kind != E164 or not (orig_tn := canonical_tn(orig.e164)):
            raise SignError("caller-not-e164")
        if dest.kind != E164 or not (dest_tn := canonical_tn(dest.e164)):
            raise SignError("callee-not-e164")
        attest = self.attest_for(orig, store)
        token = sign(self._key, self._header, orig_tn, dest_tn, attest, str(uuid.uuid4()), int(now))
        return Signed(identity_value(token, self.x5u), attest)
