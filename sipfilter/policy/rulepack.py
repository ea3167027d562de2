"""Rule packs (config/rules/*.yaml): load, validate, apply a trunk's overrides, compile once into RuleSets.

Every number, range, window, date, cap and SIP answer comes from here; nothing is evaluated per call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import sipfilter.policy.caller_id as caller_id
import sipfilter.policy.frequency as frequency
import sipfilter.policy.hours as hours
import sipfilter.policy.identity as identity
import sipfilter.policy.lists as lists
import sipfilter.policy.opposition as opposition
from sipfilter.config import Config, ConfigError, Section, TrunkConfig, YamlMap, load_yaml, merge_overrides
from sipfilter.policy.numbers import Normaliser
from sipfilter.policy.territory import NumberingPlan, PatternError, PlanError, plan_for

STORE_RULE = "store.unavailable"
NUMBER_RULE = "number.invalid"
# Rule ids a pack may give an answer for ("callee.dnc" covers every callee.dnc.<list>).
ANSWER_RULES = (
    *caller_id.RULES,
    NUMBER_RULE,
    opposition.OPPOSITION_RULE,
    "callee.dnc",
    lists.STALE_RULE,
    lists.CONSENT_RULE,
    lists.SECTOR_RULE,
    hours.WINDOW_RULE,
    hours.HOLIDAY_RULE,
    frequency.CAP_RULE,
    frequency.REFUSAL_RULE,
    STORE_RULE,
    *identity.RULES,
)
_STATUS_OK = (403, 404, 480, 486, 488, 600, 603, 607, 608)
# identity.* rules may also answer with RFC 8224's own codes (their default, see policy/identity.py).
_IDENTITY_STATUS_OK = (*identity.RFC_STATUSES, *_STATUS_OK)
_TOP_KEYS = (
    "version",
    "description",
    "numbering",
    "territories",
    "caller_id",
    "lists",
    "consent",
    "sectors",
    "hours",
    "holidays",
    "frequency",
    "identity",
    "answers",
)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    text: str


@dataclass(frozen=True, slots=True)
class RulePack:
    """A validated rule-pack file, kept as data so that trunk overrides can be merged onto it."""

    name: str
    version: str
    path: Path
    data: YamlMap


_DEFAULT_IDENTITY = identity.IdentityRules(identity.DEFAULT_MAX_AGE_S)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """One trunk's rules: its pack with its overrides applied, compiled into fast structures."""

    pack: str
    version: str
    normaliser: Normaliser
    caller_id: caller_id.CallerIdRules
    lists: lists.ListRules
    hours: hours.HoursRules
    frequency: frequency.FrequencyRules
    answers: Mapping[str, Answer]
    identity: identity.IdentityRules = _DEFAULT_IDENTITY

    def answer(self, rule: str) -> Answer:
        hit = self.answers.get(rule)
        if hit is None and rule.startswith(lists.DNC_PREFIX):
            hit = self.answers.get("callee.dnc")
        if hit is None:
            rfc = identity.RFC_ANSWERS.get(rule)
            if rfc is not None:  # RFC 8224 §6.2.2's answer to each verification failure
                return Answer(*rfc)
            # Defaults: 403 for caller-ID rules, 603 for callee rules.
            return Answer(403 if rule.startswith("caller-id.") else 603, rule)
        return hit


_REGION_RE = re.compile(r"^[A-Z]{2}$")
_NUMBERING_KEYS = ("country_code", "home_region", "shared_plan", "home_first", "blocks", "also_in",
                   "short_number_pattern", "anonymous_users", "anonymous_hosts")


def _regions(s: Section, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(r, str) and _REGION_RE.match(r) for r in value):
        raise s.error(key, f"expected a list of 2-letter region codes like [RE, YT], got {value!r}")
    return tuple(value)


def _plan(s: Section, cc: str) -> NumberingPlan | None:
    """The national plan the pack describes (home region and the overseas ones sharing its national form)."""
    if not s.has("home_region"):
        if cc == "+33":
            raise s.error("home_region", "the French plan needs `home_region: FR` and `shared_plan`")
        return None
    home = s.str("home_region")
    shared = _regions(s, "shared_plan", s.raw("shared_plan", []))
    home_first = s.str_list("home_first", ())
    blocks_s = s.section("blocks", default_empty=True)
    blocks = tuple((str(k), _regions(blocks_s, str(k), v)) for k, v in blocks_s.data.items())
    also_s = s.section("also_in", default_empty=True)
    also = tuple((str(k), _regions(also_s, str(k), v)) for k, v in also_s.data.items())
    try:
        plan = plan_for(home, shared, home_first, blocks, also)
    except PatternError as exc:
        raise s.error(
            "shared_plan", f"phonenumbers' metadata uses a pattern sipfilter cannot read: {exc}"
        ) from exc
    except PlanError as exc:
        raise s.error(exc.field, str(exc)) from exc
    if plan.home_code != cc:
        raise s.error("home_region", f"{home} numbers have country code {plan.home_code}, not {cc}")
    if cc != "+33":
        raise s.error("home_region", "only the French numbering plan (+33, home_region: FR) is supported")
    return plan


def _normaliser(s: Section) -> Normaliser:
    s.only(_NUMBERING_KEYS)
    cc = s.str("country_code", "+33")
    if not re.fullmatch(r"\+\d{1,3}", cc):
        raise s.error("country_code", f"expected like +33, got {cc!r}")
    plan = _plan(s, cc)
    pattern = s.str("short_number_pattern", r"^3[0-9]{3}$")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise s.error("short_number_pattern", f"invalid regular expression: {exc}") from exc
    return Normaliser(
        cc,
        plan,
        pattern,
        s.str_list("anonymous_users", ("anonymous",)),
        s.str_list("anonymous_hosts", ("anonymous.invalid",)),
    )


def _answers(s: Section) -> dict[str, Answer]:
    out: dict[str, Answer] = {}
    for rule in s.data:
        rule = str(rule)
        if rule not in ANSWER_RULES and not rule.startswith(lists.DNC_PREFIX):
            raise s.error(rule, f"unknown rule id (known: {', '.join(ANSWER_RULES)})")
        a = s.section(rule)
        a.only(["status", "text"])
        status = a.int("status")
        allowed = _IDENTITY_STATUS_OK if rule in identity.RULES else _STATUS_OK
        if status not in allowed:
            raise a.error("status", f"expected one of {', '.join(map(str, allowed))}, got {status}")
        out[rule] = Answer(status, a.str("text", rule))
    return out


def _compile(data: YamlMap, authorised: str | tuple[str, ...] | None, where: str) -> RuleSet:
    root = Section(data, "")
    root.only(_TOP_KEYS)
    version = root.raw("version")
    if not isinstance(version, str | int | float) or isinstance(version, bool) or not str(version).strip():
        raise root.error("version", "the rule pack needs a non-empty `version`")
    normaliser = _normaliser(root.section("numbering", default_empty=True))
    hours_rules = hours.compile_hours(
        root.section("hours"),
        root.section("holidays", default_empty=True),
        root.section("territories", default_empty=True),
        normaliser.plan,
    )
    return RuleSet(
        pack=where,
        version=str(version),
        normaliser=normaliser,
        caller_id=caller_id.compile_caller_id(root.section("caller_id"), authorised),
        lists=lists.compile_lists(
            root.section("lists", default_empty=True),
            root.section("consent", default_empty=True),
            root.section("sectors", default_empty=True),
            hours_rules.default_zone,
        ),
        hours=hours_rules,
        frequency=frequency.compile_frequency(root.section("frequency")),
        answers=_answers(root.section("answers", default_empty=True)),
        identity=identity.compile_identity(root.section("identity", default_empty=True)),
    )


def load_rule_pack(path: Path, name: str, where: tuple[str, int] | None = None) -> RulePack:
    """Read and validate one pack file (compiling it once, without overrides, to catch errors early)."""
    if not path.is_file():
        file, line = where or (str(path), 0)
        raise ConfigError(f"rule pack file not found: {path}", file, line, f"rule_packs.{name}")
    data = load_yaml(path)
    rs = _compile(data, None, name)
    return RulePack(name, rs.version, path, data)


def compile_rules(pack: RulePack, trunk: TrunkConfig) -> RuleSet:
    """The trunk's RuleSet: pack values with `trunk.overrides` merged on top (errors name the override)."""
    data = merge_overrides(pack.data, trunk.overrides) if trunk.overrides else pack.data
    return _compile(data, trunk.lists.authorised_caller_ids, pack.name)


def normaliser_for(config: Config, trunk: str | None = None) -> Normaliser:
    """The number normaliser the policy engine uses for `trunk` (default: the first trunk).

    List importers must use it so that stored numbers match what the engine looks up
    (e.g. 0692… → +262692…)."""
    name = trunk or next(iter(config.rules))
    return config.rules[name].normaliser


def default_zone(config: Config) -> ZoneInfo:
    return next(iter(config.rules.values())).hours.default_zone
