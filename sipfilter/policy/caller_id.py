"""Caller-ID rules: never anonymous, 06/07, 089, 118XYZ or a 3BPQ other than 30PQ/31PQ on any trunk calling
consumers (L221-17, arrêté of 5 July 2016, Arcep); automated trunks only NPV/080x/30PQ/31PQ (Arcep 2022-1583).

Pure: classifies normalised numbers with the rule pack's prefix table; the only store use is the allow-list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sipfilter.config import Section
from sipfilter.policy.facts import CallFacts
from sipfilter.policy.numbers import ANONYMOUS, E164, SHORT, Number
from sipfilter.policy.verdict import FAIL, PASS, Outcome
from sipfilter.stores.base import Store

ANONYMOUS_RULE = "caller-id.anonymous"
INVALID_RULE = "caller-id.invalid"
MOBILE_RULE = "caller-id.mobile"
PREMIUM_RULE = "caller-id.premium"
NOT_NPV_RULE = "caller-id.not-npv"
UNAUTHORISED_RULE = "caller-id.unauthorised"
PAI_MISMATCH_RULE = "caller-id.pai-mismatch"
RULES = (
    ANONYMOUS_RULE,
    INVALID_RULE,
    MOBILE_RULE,
    PREMIUM_RULE,
    NOT_NPV_RULE,
    UNAUTHORISED_RULE,
    PAI_MISMATCH_RULE,
)
_CATEGORY_RULES = (MOBILE_RULE, PREMIUM_RULE, NOT_NPV_RULE, INVALID_RULE, UNAUTHORISED_RULE)

_PASS = {rule: Outcome(PASS, "") for rule in RULES}


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    allow: bool
    rule: str  # rule id when refused
    automated_only: bool = False  # refused only on automated trunks (the NPV requirement)

    def refuses(self, automated: bool) -> bool:
        return not self.allow and (automated or not self.automated_only)


@dataclass(frozen=True, slots=True)
class CallerIdRules:
    prefixes: Mapping[str, Category]  # E.164 prefix (or short-number digits) → category; longest prefix wins
    lengths: tuple[int, ...]  # prefix lengths, longest first
    short: Category
    other: Category
    anonymous_privacy: frozenset[str]
    pai_must_match: bool
    # Trunk allow-list: a store list name, inline numbers/prefixes ("+33162*"), or None.
    authorised_list: str | None
    authorised_inline: tuple[str, ...] | None
    # (From, PAIs, Privacy) → outcome; caller IDs repeat on every call of a campaign. Only used when the
    # answer cannot change without a config reload (no store-backed allow-list).
    memo: dict[object, tuple[str, Mapping[str, Outcome]]] = field(
        default_factory=dict, compare=False
    )

    def classify(self, n: Number) -> Category:
        # A short number's `e164` is its digits: only the categories' digit prefixes (no "+") can match it.
        for length in self.lengths:
            cat = self.prefixes.get(n.e164[:length])
            if cat is not None:
                return cat
        return self.short if n.kind == SHORT else self.other


def _category(s: Section, name: str, with_prefixes: bool) -> Category:
    keys = ["allow", "rule", "automated_only"]
    s.only([*keys, "prefixes", "short_prefixes"] if with_prefixes else keys)
    allow = s.bool("allow")
    rule = s.str("rule", NOT_NPV_RULE)
    if rule not in _CATEGORY_RULES:
        raise s.error("rule", f"expected one of {', '.join(_CATEGORY_RULES)}, got {rule!r}")
    return Category(name, allow, rule, s.bool("automated_only", False))


def compile_caller_id(s: Section, authorised: str | tuple[str, ...] | None) -> CallerIdRules:
    s.only(["categories", "short_numbers", "other", "anonymous_privacy", "pai_must_match_from"])
    cats = s.section("categories")
    prefixes: dict[str, Category] = {}
    for name in cats.data:
        sec = cats.section(str(name))
        cat = _category(sec, str(name), True)
        if not sec.has("prefixes") and not sec.has("short_prefixes"):
            raise sec.error("prefixes", "a category needs `prefixes` (E.164) or `short_prefixes` (digits)")
        kinds = (("prefixes", "an E.164 prefix like +33162"), ("short_prefixes", "digits like 30"))
        for key, example in kinds:
            for i, prefix in enumerate(sec.str_list(key, None)):
                body = prefix[1:] if key == "prefixes" and prefix.startswith("+") else prefix
                if not body.isdigit() or not body.isascii() or (key == "prefixes") != (body != prefix):
                    raise sec.item_error(key, i, f"expected {example}, got {prefix!r}")
                if prefix in prefixes:
                    raise sec.item_error(key, i, f"prefix {prefix} is already in {prefixes[prefix].name!r}")
                prefixes[prefix] = cat
    short = _category(s.section("short_numbers"), "short", False)
    other = _category(s.section("other"), "other", False)
    auth_list = authorised if isinstance(authorised, str) else None
    auth_inline = authorised if isinstance(authorised, tuple) else None
    return CallerIdRules(
        prefixes=prefixes,
        lengths=tuple(sorted({len(p) for p in prefixes}, reverse=True)),
        short=short,
        other=other,
        anonymous_privacy=frozenset(v.lower() for v in s.str_list("anonymous_privacy")),
        pai_must_match=s.bool("pai_must_match_from", False),
        authorised_list=auth_list,
        authorised_inline=auth_inline,
    )


def authorised(rules: CallerIdRules, n: Number, store: Store) -> tuple[bool, str]:
    """Whether `n` is in the trunk's authorised caller IDs (True when it has no such list), and why not."""
    if rules.authorised_inline is not None:
        for entry in rules.authorised_inline:
            if n.e164.startswith(entry[:-1]) if entry.endswith("*") else n.e164 == entry:
                return True, ""
        return False, f"{n.e164} is not in the trunk's authorised caller IDs"
    if rules.authorised_list is not None:
        try:
            if store.list_contains(rules.authorised_list, n.e164):
                return True, ""
        except KeyError:
            return False, f"authorised caller-ID list {rules.authorised_list!r} has never been imported"
        return False, f"{n.e164} is not in authorised caller-ID list {rules.authorised_list!r}"
    return True, ""


def check_caller_id(
    rules: CallerIdRules, facts: CallFacts, automated: bool, store: Store, out: dict[str, Outcome]
) -> str:
    """Fill `out` with one outcome per caller-ID rule; return the first failing rule id, or "".

    Every trunk: anonymous, invalid, the categories refused on every trunk, the allow-list, PAI = From.
    `automated` trunks also: the categories refused for automated calls only (the NPV requirement)."""
    if rules.authorised_list is not None:
        return _check(rules, facts, automated, store, out)
    caller = facts.caller
    # The caller's fields rather than the Number: str hashes are cached, a dataclass hash is a Python call.
    key = (caller.raw, caller.e164, caller.kind, caller.error, facts.asserted, facts.privacy, automated)
    hit = rules.memo.get(key)
    if hit is None:
        mine: dict[str, Outcome] = {}
        hit = (_check(rules, facts, automated, store, mine), mine)
        if len(rules.memo) >= _MEMO_MAX:
            rules.memo.clear()
        rules.memo[key] = hit
    out.update(hit[1])  # a dict: update() copies it without iterating pairs
    return hit[0]


_MEMO_MAX = 50_000


def _check(
    rules: CallerIdRules, facts: CallFacts, automated: bool, store: Store, out: dict[str, Outcome]
) -> str:
    failures: dict[str, str] = {}
    hidden = rules.anonymous_privacy.intersection(facts.privacy)
    if hidden:
        failures[ANONYMOUS_RULE] = f"Privacy: {', '.join(sorted(hidden))} withholds the caller ID"
    for label, n in (("From", facts.caller), *(("P-Asserted-Identity", p) for p in facts.asserted)):
        if n.kind == ANONYMOUS:
            failures.setdefault(ANONYMOUS_RULE, f"{label} is anonymous ({n.raw.strip()[:80]})")
            continue
        if n.kind != E164 and n.kind != SHORT:
            failures.setdefault(
                INVALID_RULE, f"{label} {n.raw.strip()[:80]!r} is not a valid number: {n.error}"
            )
            continue
        cat = rules.classify(n)
        if cat.refuses(automated):
            failures.setdefault(cat.rule, f"{label} {n.e164} is in category {cat.name!r}")
            continue
        ok, why = authorised(rules, n, store)
        if not ok:
            failures.setdefault(UNAUTHORISED_RULE, f"{label} {why}")
    if (
        rules.pai_must_match
        and facts.caller.ok
        and any(p.ok and p.e164 != facts.caller.e164 for p in facts.asserted)
    ):
        failures[PAI_MISMATCH_RULE] = f"P-Asserted-Identity differs from From {facts.caller.e164}"
    if not failures:
        out.update(_PASS)
        return ""
    first = ""
    for rule in RULES:
        if rule in failures:
            out[rule] = Outcome(FAIL, failures[rule])
            first = first or rule
        else:
            out[rule] = _PASS[rule]
    return first
