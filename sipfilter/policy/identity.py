"""The identity.* rules: what a STIR/SHAKEN verification finding means for the decision (RFC 8224 §6.2.2).

Pure: takes the verifier's finding (sipfilter/identity) as plain data; never parses, fetches or verifies.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipfilter.config import Section
from sipfilter.policy.verdict import FAIL, PASS, SKIP, Outcome

# One rule per answer RFC 8224 §6.2.2 gives a verification service.
MISSING_RULE = "identity.missing"  # 428 Use Identity Header: none (with a supported ppt), one required
BAD_INFO_RULE = "identity.bad-info"  # 436 Bad Identity Info: the x5u certificate cannot be had
CREDENTIAL_RULE = "identity.unsupported-credential"  # 437 Unsupported Credential: untrusted / unusable
INVALID_RULE = "identity.invalid"  # 438 Invalid Identity Header: malformed, bad signature, wrong numbers
STALE_RULE = "identity.stale"  # 403 Stale Date: iat outside the freshness window
RULES = (MISSING_RULE, BAD_INFO_RULE, CREDENTIAL_RULE, INVALID_RULE, STALE_RULE)

# The RFC's answer and reason phrase for each rule: the default when a rule pack names none.
RFC_ANSWERS: dict[str, tuple[int, str]] = {
    MISSING_RULE: (428, "Use Identity Header"),
    BAD_INFO_RULE: (436, "Bad Identity Info"),
    CREDENTIAL_RULE: (437, "Unsupported Credential"),
    INVALID_RULE: (438, "Invalid Identity Header"),
    STALE_RULE: (403, "Stale Date"),
}
RFC_STATUSES = (428, 436, 437, 438)
DEFAULT_MAX_AGE_S = 60  # RFC 8224 §6.2.2 and ATIS-1000074 recommend one minute


@dataclass(frozen=True, slots=True)
class IdentityRules:
    """The rule pack's `identity:` section."""

    max_age_s: int  # |now - iat| beyond this is stale (both directions: clocks drift)


def compile_identity(s: Section) -> IdentityRules:
    s.only(["max_age_s"])
    return IdentityRules(s.int("max_age_s", DEFAULT_MAX_AGE_S, lo=1, hi=3600))


@dataclass(frozen=True, slots=True)
class IdentityFinding:
    """What the verifier found on one INVITE: `rule` "" when the PASSporT verified (or none was needed)."""

    rule: str
    reason: str
    enforce: bool = True  # False: `identity.verify.mode: monitor`, the call is relayed and an alert kept
    attest: str = ""  # attestation level of the PASSporT that verified
    present: bool = True  # an Identity header with a supported ppt was there


_ALL_PASS = {rule: Outcome(PASS, "") for rule in RULES}


def check_identity(finding: IdentityFinding, out: dict[str, Outcome], alerts: list[str]) -> str:
    """Fill `out` with one outcome per identity rule; return the failing rule id when it blocks, or ""."""
    rule = finding.rule
    if not rule:
        if finding.present:
            out.update(_ALL_PASS)
        else:
            out[MISSING_RULE] = Outcome(PASS, "no Identity header (not required on this trunk)")
            for other in RULES[1:]:
                out[other] = Outcome(SKIP, "no Identity header")
        return ""
    for other in RULES:
        if other == rule:
            out[other] = Outcome(FAIL, finding.reason)
        elif not finding.present:
            out[other] = Outcome(SKIP, "no Identity header")
        elif other == MISSING_RULE:
            out[other] = _ALL_PASS[other]
        else:
            out[other] = Outcome(SKIP, f"decided by {rule}")
    if not finding.enforce:
        alerts.append(f"{rule}: {finding.reason} (identity.verify.mode: monitor)")
        return ""
    return rule
