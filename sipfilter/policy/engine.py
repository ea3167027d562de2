"""The policy engine: one new INVITE's CallFacts + the trunk's compiled rules + store lookups → Decision.

Called once per INVITE by the B2BUA and by `sipfilter check`, which build the CallFacts with the trunk's
`reader` (sipfilter.b2bua.facts); never parses SIP, never raises out of `decide`.
"""

from __future__ import annotations

import logging
from zoneinfo import ZoneInfo

import sipfilter.policy.caller_id as caller_id
import sipfilter.policy.frequency as frequency
import sipfilter.policy.hours as hours
import sipfilter.policy.lists as lists
import sipfilter.policy.opposition as opposition
import sipfilter.policy.proof as proof
from sipfilter.config import Config, TrunkConfig
from sipfilter.policy.facts import CallFacts
from sipfilter.policy.identity import RULES as IDENTITY_RULES
from sipfilter.policy.identity import IdentityFinding, check_identity
from sipfilter.policy.numbers import E164, NumberReader
from sipfilter.policy.rulepack import NUMBER_RULE, STORE_RULE, RuleSet
from sipfilter.policy.verdict import ALLOW, FAIL, PASS, REJECT, SKIP, Decision, Outcome, Verdict
from sipfilter.stores.base import Store, StoreUnavailable

log = logging.getLogger(__name__)

_PASS = Outcome(PASS, "")
_ALLOWED = Verdict(ALLOW, 0, "", "")
_NOT_PROSPECTING = "trunk is not prospecting"


class UnknownTrunk(LookupError):
    """The trunk name is not in the configuration."""


class PolicyEngine:
    """Holds the compiled rules of one Config; swap the engine with the config on reload."""

    def __init__(self, config: Config):
        self.config = config
        self._rules = config.rules
        self._trunks = config.trunks
        # trunk → how it reads numbers (its rule pack's normaliser, its default region): on every INVITE.
        self._readers = {name: NumberReader(rs.normaliser, config.trunks[name].region)
                         for name, rs in config.rules.items()}  # fmt: skip
        # trunk → the store lists its rules consult (their versions go on the audit line)
        self._list_names = {name: _consulted_lists(t) for name, t in config.trunks.items()}

    def rules_for(self, trunk: str) -> RuleSet:
        try:
            return self._rules[trunk]
        except KeyError:
            raise UnknownTrunk(trunk) from None

    def reader(self, trunk: str) -> NumberReader:
        """How `trunk` reads numbers: what CallFacts are built with (the B2BUA, `sipfilter check`)."""
        try:
            return self._readers[trunk]
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
        verifies = t.identity is not None and t.identity.verify is not None
        return (
            NUMBER_RULE,
            *caller_id.RULES,
            *(IDENTITY_RULES if verifies else ()),
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

    # -- decision ------------------------------------------------------------------------------------
    async def decide(self, facts: CallFacts, store: Store, *, record: bool = True,
                     identity: IdentityFinding | None = None) -> Decision:  # fmt: skip
        """Evaluate every rule; record the attempt (frequency) when the call will be relayed and `record`.
        `identity`: what STIR/SHAKEN verification found (trunks with `identity.verify`), an identity.* rule.

        Store failures apply the trunk's `on_store_error`; no exception leaves this method. Everything but
        the frequency rules is synchronous (lists and records are in memory): one await, on the store."""
        rs = self.rules_for(facts.trunk)
        trunk = self._trunks[facts.trunk]
        look = lists.Lookups(store, trunk.account, facts.callee.e164, facts.at, trunk.purpose)
        consulted = self._list_names[facts.trunk]
        out: dict[str, Outcome] = {}
        alerts: list[str] = []
        recorded = False
        try:
            first, zones = self._evaluate(rs, trunk, facts, store, out, alerts, look, identity)
            if zones is not None:  # the frequency rules are due
                freq, account, callee, at = rs.frequency, trunk.account, facts.callee.e164, facts.at
                if not record:
                    r = await frequency.check_only(freq, store, account, callee, at, out, zones)
                elif trunk.mode == "monitor":
                    r, recorded = await frequency.check_and_record(
                        freq, store, account, callee, at, out, zones, True
                    )
                else:  # frequency.check_and_record, inlined: one coroutine less on every relayed call
                    cutoff = freq.cutoff(at, zones)
                    d = await store.check_and_record_attempt(
                        account, callee, at, freq.cap, freq.window_s, freq.store_cooldown_s(at, cutoff)
                    )
                    r = frequency.fill(
                        freq, out, at, d.refused_at, d.attempts_in_window, d.allowed, cutoff, zones
                    )
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

    def _verdict(
        self,
        rs: RuleSet, trunk: TrunkConfig, out: dict[str, Outcome], first: str, recorded: bool,
        alerts: list[str],
    ) -> Decision:
        if not first:
            return Decision(_ALLOWED, out, False, recorded, rs.version, tuple(alerts) if alerts else ())
        return self._refused(rs, trunk, out, first, recorded, tuple(alerts))

    def _refused(self, rs: RuleSet, trunk: TrunkConfig, out: dict[str, Outcome], first: str, recorded: bool,
                 alerts: tuple[str, ...]) -> Decision:  # fmt: skip
        answer = rs.answer(first)
        detail = out[first].reason
        reason = f"{answer.text}: {detail}" if detail else answer.text
        if trunk.mode == "monitor":
            return Decision(Verdict(ALLOW, 0, first, reason), out, True, recorded, rs.version, alerts)
        verdict = Verdict(REJECT, answer.status, first, reason)
        return Decision(verdict, out, False, recorded, rs.version, alerts)

    def _store_error(self, rs: RuleSet, trunk: TrunkConfig, out: dict[str, Outcome], why: str) -> Decision:
        out[STORE_RULE] = Outcome(FAIL, why)
        answer = rs.answer(STORE_RULE)
        reason = f"{answer.text}: {why}"
        if trunk.on_store_error == "allow":
            alert = (f"{STORE_RULE}: {why}",)
            # Failing open relays what the store could not check, never a call a rule evaluated before the
            # failure (number, caller ID, a list already read) refused.
            failed = next((rule for rule, o in out.items() if o.result == FAIL and rule != STORE_RULE), "")
            if failed:
                return self._refused(rs, trunk, out, failed, False, alert)
            return Decision(_ALLOWED, out, False, False, rs.version, alert)
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
        found: IdentityFinding | None = None,
    ) -> tuple[str, tuple[ZoneInfo, ...] | None]:
        """Every rule but the frequency ones; returns (first failing rule or "", the callee's zones when the
        frequency rules are due, else None)."""
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
        if found is not None:
            r = check_identity(found, out, alerts)
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
            return first, None
        r = opposition.check_opposition(store, trunk.account, callee.e164, facts.at, out)
        first = first or r
        placement, zone_problem = self._places(rs, trunk, facts, look)
        places = placement.places
        r = hours.check_hours(rs.hours, places, facts.at, trunk.prospecting, None, out)
        if r and (
            out[hours.WINDOW_RULE].result == FAIL
            or (r == hours.HOLIDAY_RULE and rs.hours.consent_lifts_holidays)
        ):
            # D223-9 §2: outside the legal days/hours only with the consumer's consent (which may name its
            # hours). Public holidays still block unless the pack says consent lifts them ([U]).
            record_ = look.consent() if rs.hours.consent_hours_override else None
            if record_ is not None and record_.hours:
                r = hours.check_hours(rs.hours, places, facts.at, True, record_.hours, out)
        if zone_problem:
            out[hours.WINDOW_RULE] = Outcome(FAIL, zone_problem)
            r = r or hours.WINDOW_RULE
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
            return first, None
        if first and trunk.mode == "enforce":
            frequency.skip(out, f"not reached: rejected by {first}")
            return first, None
        return first, placement.zones

    def _places(
        self, rs: RuleSet, trunk: TrunkConfig, facts: CallFacts, look: lists.Lookups
    ) -> tuple[hours.Placement, str]:
        """Where the callee may be: its number's territories, plus the zones the dialer (`callee_zone`) and
        its consent record give, when known; and why a given zone cannot be used ("" when none)."""
        if not trunk.prospecting:  # no hours rule, no frequency rule: where the callee is does not matter
            return rs.hours.places_for(facts.callee.e164), ""
        given: list[ZoneInfo] = []
        problem = ""
        if facts.callee_zone:
            zone = hours.zone_named(facts.callee_zone.strip())
            if zone is None:
                problem = (f"the callee's time zone {facts.callee_zone.strip()[:64]!r} given by the dialer "
                           "is not an IANA time zone name")
            else:
                given.append(zone)
        record_ = look.consent()
        if record_ is not None and record_.time_zone:
            zone = hours.zone_named(record_.time_zone)
            if zone is None:
                problem = problem or (f"the consent record's time zone {record_.time_zone[:64]!r} is not "
                                      "an IANA time zone name")
            else:
                given.append(zone)
        return rs.hours.places_for(facts.callee.e164, tuple(given)), problem


def _consulted_lists(trunk: TrunkConfig) -> tuple[str, ...]:
    auth = trunk.lists.authorised_caller_ids
    return (*trunk.lists.dnc, *((auth,) if isinstance(auth, str) else ()))
