"""The policy engine: one new INVITE's CallFacts + the trunk's compiled rules + store lookups → Decision.

Called once per INVITE by the B2BUA and by `sipfilter check`; never raises out of `decide`, no SIP I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sipfilter.config import Config, TrunkConfig
from sipfilter.policy import caller_id, frequency, hours, lists, opposition, proof
from sipfilter.policy.facts import CallFacts
from sipfilter.policy.numbers import E164, Number
from sipfilter.policy.rulepack import NUMBER_RULE, STORE_RULE, RuleSet
from sipfilter.policy.verdict import ALLOW, FAIL, PASS, REJECT, SKIP, Decision, Outcome, Verdict
from sipfilter.stores.base import Store, StoreUnavailable

log = logging.getLogger(__name__)

_PASS = Outcome(PASS, "")
_ALLOWED = Verdict(ALLOW, 0, "", "")
_NOT_PROSPECTING = "trunk is not prospecting"
_NO_PRIVACY: frozenset[str] = frozenset()
_NO_FROM = Number("", "", "anonymous", "no From")
_NO_CALLEE = Number("", "", "invalid", "no callee")


class UnknownTrunk(KeyError):
    """The trunk name is not in the configuration."""


def split_header_values(values: Iterable[str]) -> list[str]:
    """Split comma-separated header values, respecting quotes and <…> (PAI may list several identities)."""
    out: list[str] = []
    for value in values:
        if "," not in value:
            if value.strip():
                out.append(value.strip())
            continue
        depth, quoted, start = 0, False, 0
        for i, ch in enumerate(value):
            if ch == '"' and (i == 0 or value[i - 1] != "\\"):
                quoted = not quoted
            elif not quoted and ch == "<":
                depth += 1
            elif not quoted and ch == ">":
                depth -= 1
            elif ch == "," and not quoted and depth <= 0:
                out.append(value[start:i].strip())
                start = i + 1
        out.append(value[start:].strip())
    return [v for v in out if v]


def addr_spec(value: str) -> str:
    """The URI of a From/To/PAI header value, without display name or header parameters (;tag=…), so that the
    number caches see the same string on every call from one caller ID (RFC 3261 §20: a URI with `;` in an
    addr-spec header value must be in <>, so without <> the first `;` starts the header parameters)."""
    start = value.find("<")
    if start >= 0:
        end = value.find(">", start)
        return value[start + 1 : end] if end > 0 else value[start + 1 :]
    return value.partition(";")[0].strip()


def _privacy_tokens(values: Iterable[str]) -> frozenset[str]:
    return frozenset(t.strip().lower() for v in values for t in v.replace(",", ";").split(";") if t.strip())


class PolicyEngine:
    """Holds the compiled rules of one Config; swap the engine with the config on reload."""

    def __init__(self, config: Config):
        self.config = config
        self._rules = config.rules
        self._trunks = config.trunks
        # trunk → its rule pack's number parsers (cached for callers, uncached for callees) and its default
        # region: read on every INVITE.
        self._parsers = {
            name: (rs.normaliser.parse, rs.normaliser.parse_callee, config.trunks[name].region)
            for name, rs in config.rules.items()
        }
        # trunk → the store lists its rules consult (their versions go on the audit line)
        self._list_names = {name: _consulted_lists(t) for name, t in config.trunks.items()}

    def rules_for(self, trunk: str) -> RuleSet:
        try:
            return self._rules[trunk]
        except KeyError:
            raise UnknownTrunk(trunk) from None

    def trunk(self, trunk: str) -> TrunkConfig:
        try:
            return self._trunks[trunk]
        except KeyError:
            raise UnknownTrunk(trunk) from None

    def rule_ids(self, trunk: str) -> tuple[str, ...]:
        """Every rule id this trunk can report, in evaluation order (e.g. to pre-create metric labels)."""
        t = self.trunk(trunk)
        return (
            NUMBER_RULE,
            *caller_id.RULES,
            opposition.OPPOSITION_RULE,
            hours.HOLIDAY_RULE,
            hours.WINDOW_RULE,
            lists.STALE_RULE,
            *(lists.DNC_PREFIX + name for name in t.lists.dnc),
            lists.SECTOR_RULE,
            lists.CONSENT_RULE,
            frequency.REFUSAL_RULE,
            frequency.CAP_RULE,
            STORE_RULE,
        )

    # -- facts ---------------------------------------------------------------------------------------
    def facts(
        self,
        trunk: str,
        from_: str,
        to: str,
        pai: Sequence[str] = (),
        privacy: Iterable[str] = (),
        at: float = 0.0,
        call_id: str = "",
        to_header: str = "",
    ) -> CallFacts:
        """CallFacts from plain strings (URIs, name-addrs or numbers); `to` is the Request-URI or number."""
        rs, region = self.rules_for(trunk), self.trunk(trunk).region
        norm = rs.normaliser
        callee = norm.parse(to, region) if to else _NO_CALLEE
        if callee.kind != E164 and to_header:
            alt = norm.parse(to_header, region)
            if alt.kind == E164:
                callee = alt
        tokens = _privacy_tokens(privacy) if privacy else _NO_PRIVACY
        asserted = tuple(norm.parse(p, region) for p in split_header_values(pai)) if pai else ()
        caller = norm.parse(from_, region) if from_ else _NO_FROM
        return CallFacts(trunk, at, caller, asserted, tokens, callee, call_id)

    def facts_from_request(self, trunk_name: str, request: Any, now: float) -> CallFacts:
        """Extract From, every P-Asserted-Identity, Privacy, Request-URI/To callee and Call-ID from a parsed
        sipfilter.sip Request (only `request.uri` and `request.headers.get/get_all` are used).

        The same facts as `facts()` with these headers, built in one pass (on every INVITE): PAI split once,
        To read only when the Request-URI holds no number."""
        try:
            parse, parse_callee, region = self._parsers[trunk_name]
        except KeyError:
            raise UnknownTrunk(trunk_name) from None
        headers = request.headers
        get = headers.get
        to = request.uri
        callee = parse_callee(to, region) if to else _NO_CALLEE
        if callee.kind != E164:
            to_header = addr_spec(get("To") or "")
            if to_header:
                alt = parse_callee(to_header, region)
                if alt.kind == E164:
                    callee = alt
        from_ = addr_spec(get("From") or "")
        pai = headers.get_all("P-Asserted-Identity")
        privacy = headers.get_all("Privacy")
        return CallFacts(
            trunk_name,
            now,
            parse(from_, region) if from_ else _NO_FROM,
            tuple([parse(addr_spec(v), region) for v in split_header_values(pai)]) if pai else (),
            _privacy_tokens(privacy) if privacy else _NO_PRIVACY,
            callee,
            get("Call-ID") or "",
        )

    # -- decision ------------------------------------------------------------------------------------
    async def decide(self, facts: CallFacts, store: Store, *, record: bool = True) -> Decision:
        """Evaluate every rule; record the attempt (frequency) when the call will be relayed and `record`.

        Store failures apply the trunk's `on_store_error`; no exception leaves this method. Everything but
        the frequency rules is synchronous (lists and records are in memory): one await, on the store."""
        rs = self.rules_for(facts.trunk)
        trunk = self._trunks[facts.trunk]
        look = lists.Lookups(store, trunk.account, facts.callee.e164, facts.at)
        consulted = self._list_names[facts.trunk]
        out: dict[str, Outcome] = {}
        alerts: list[str] = []
        recorded = False
        try:
            first, frequency_due = self._evaluate(rs, trunk, facts, store, out, alerts, look)
            if frequency_due:
                freq, account, callee = rs.frequency, trunk.account, facts.callee.e164
                if not record:
                    r = await frequency.check_only(freq, store, account, callee, facts.at, out)
                elif trunk.mode == "monitor":
                    r, recorded = await frequency.check_and_record(
                        freq, store, account, callee, facts.at, out, True
                    )
                else:  # frequency.check_and_record, inlined: one coroutine less on every relayed call
                    d = await store.check_and_record_attempt(
                        account, callee, facts.at, freq.cap, freq.window_s, freq.cooldown_s
                    )
                    r = frequency.fill(freq, out, facts.at, d.refused_at, d.attempts_in_window, d.allowed)
                    recorded = d.allowed
                first = first or r
        except StoreUnavailable as exc:
            decision = self._store_error(rs, trunk, out, f"store unavailable: {exc}")
        except Exception as exc:  # a store backend bug must not take the call path down
            log.exception("policy evaluation failed on trunk %s", facts.trunk)
            decision = self._store_error(rs, trunk, out, f"internal error: {type(exc).__name__}: {exc}")
        else:
            decision = self._verdict(rs, trunk, out, first, recorded, alerts)
        return proof.attach(decision, look, store, consulted)

    @staticmethod
    def _verdict(
        rs: RuleSet, trunk: TrunkConfig, out: dict[str, Outcome], first: str, recorded: bool,
        alerts: list[str],
    ) -> Decision:
        if not first:
            return Decision(_ALLOWED, out, False, recorded, rs.version, tuple(alerts) if alerts else ())
        answer = rs.answer(first)
        detail = out[first].reason
        reason = f"{answer.text}: {detail}" if detail else answer.text
        if trunk.mode == "monitor":
            return Decision(Verdict(ALLOW, 0, first, reason), out, True, recorded, rs.version, tuple(alerts))
        return Decision(
            Verdict(REJECT, answer.status, first, reason), out, False, recorded, rs.version, tuple(alerts)
        )

    def _store_error(self, rs: RuleSet, trunk: TrunkConfig, out: dict[str, Outcome], why: str) -> Decision:
        out[STORE_RULE] = Outcome(FAIL, why)
        answer = rs.answer(STORE_RULE)
        reason = f"{answer.text}: {why}"
        if trunk.on_store_error == "allow":
            return Decision(_ALLOWED, out, False, False, rs.version, (f"{STORE_RULE}: {why}",))
        if trunk.mode == "monitor":
            return Decision(Verdict(ALLOW, 0, STORE_RULE, reason), out, True, False, rs.version, ())
        return Decision(Verdict(REJECT, answer.status, STORE_RULE, reason), out, False, False, rs.version, ())

    def _evaluate(
        self,
        rs: RuleSet,
        trunk: TrunkConfig,
        facts: CallFacts,
        store: Store,
        out: dict[str, Outcome],
        alerts: list[str],
        look: lists.Lookups,
    ) -> tuple[str, bool]:
        """Every rule but the frequency ones; returns (first failing rule or "", frequency rules due)."""
        callee = facts.callee
        first = ""
        if callee.kind == E164:
            out[NUMBER_RULE] = _PASS
        else:
            why = callee.error or callee.kind
            out[NUMBER_RULE] = Outcome(
                FAIL, f"callee {callee.raw.strip()[:80]!r} is not a valid number ({why})"
            )
            first = NUMBER_RULE
        r = caller_id.check_caller_id(rs.caller_id, facts, trunk.automated, store, out)
        first = first or r
        if callee.kind != E164:
            for rule in (
                opposition.OPPOSITION_RULE,
                hours.HOLIDAY_RULE,
                hours.WINDOW_RULE,
                lists.STALE_RULE,
                *(lists.DNC_PREFIX + n for n in trunk.lists.dnc),
                lists.SECTOR_RULE,
                lists.CONSENT_RULE,
            ):
                out[rule] = Outcome(SKIP, "callee number is not valid")
            frequency.skip(out, "callee number is not valid")
            return first, False
        r = opposition.check_opposition(store, trunk.account, callee.e164, facts.at, out)
        first = first or r
        r = hours.check_hours(rs.hours, callee.e164, facts.at, trunk.prospecting, None, out)
        if r and (
            out[hours.WINDOW_RULE].result == FAIL
            or (r == hours.HOLIDAY_RULE and rs.hours.consent_lifts_holidays)
        ):
            # D223-9 §2: outside the legal days/hours only with the consumer's consent (which may name its
            # hours). Public holidays still block unless the pack says consent lifts them ([U]).
            record_ = look.consent() if rs.hours.consent_hours_override else None
            if record_ is not None and record_.hours:
                r = hours.check_hours(rs.hours, callee.e164, facts.at, True, record_.hours, out)
        first = first or r
        r, missing = lists.check_stale(
            rs.lists, trunk.lists.dnc, store, facts.at, trunk.on_stale_list, out, alerts
        )
        first = first or r
        r = lists.check_dnc(rs.lists, trunk.lists.dnc, missing, look, out)
        first = first or r
        r = lists.check_sector(rs.lists, trunk.sector, trunk.prospecting, look, out)
        first = first or r
        r = lists.check_consent(rs.lists, trunk.prospecting, look, out)
        first = first or r
        if not trunk.prospecting:
            frequency.skip(out, _NOT_PROSPECTING)
            return first, False
        if first and trunk.mode == "enforce":
            frequency.skip(out, f"not reached: rejected by {first}")
            return first, False
        return first, True


def _consulted_lists(trunk: TrunkConfig) -> tuple[str, ...]:
    auth = trunk.lists.authorised_caller_ids
    return (*trunk.lists.dnc, *((auth,) if isinstance(auth, str) else ()))
