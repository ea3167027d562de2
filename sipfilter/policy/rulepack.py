"""Rule packs (config/rules/*.yaml): load, validate, apply a trunk's overrides, compile once into RuleSets.

Every number, range, window, date, cap and SIP answer comes from here; nothing is evaluated per call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sipfilter.config import ConfigError, Section, YamlMap, load_yaml, merge_overrides
from sipfilter.policy import caller_id, frequency, hours, lists, opposition
from sipfilter.policy.numbers import Normaliser

if TYPE_CHECKING:
    from sipfilter.config import Config, TrunkConfig

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
)
_STATUS_OK = (403, 404, 480, 486, 488, 600, 603, 607, 608)
_TOP_KEYS = (
    "version",
    "description",
    "numbering",
    "caller_id",
    "lists",
    "consent",
    "sectors",
    "hours",
    "holidays",
    "frequency",
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

    def answer(self, rule: str) -> Answer:
        hit = self.answers.get(rule)
        if hit is None and rule.startswith(lists.DNC_PREFIX):
            hit = self.answers.get("callee.dnc")
        if hit is None:
            # Defaults of the brief: 403 for caller-ID rules, 603 for callee rules.
            return Answer(403 if rule.startswith("caller-id.") else 603, rule)
        return hit


def _normaliser(s: Section) -> Normaliser:
    s.only(["country_code", "overseas", "short_number_pattern", "anonymous_users", "anonymous_hosts"])
    cc = s.str("country_code", "+33")
    if not re.fullmatch(r"\+\d{1,3}", cc):
        raise s.error("country_code", f"expected like +33, got {cc!r}")
    over = s.section("overseas", default_empty=True)
    table: dict[str, str] = {}
    for prefix, code in over.data.items():
        if not re.fullmatch(r"\d{1,8}", str(prefix)) or not re.fullmatch(r"\+\d{1,3}", str(code)):
            raise over.error(str(prefix), f'expected "<digits>": "+<country code>", got {prefix!r}: {code!r}')
        table[str(prefix)] = str(code)
    pattern = s.str("short_number_pattern", r"^3[0-9]{3}$")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise s.error("short_number_pattern", f"invalid regular expression: {exc}") from exc
    return Normaliser(
        cc,
        table,
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
        if status not in _STATUS_OK:
            raise a.error("status", f"expected one of {', '.join(map(str, _STATUS_OK))}, got {status}")
        out[rule] = Answer(status, a.str("text", rule))
    return out


def _compile(data: YamlMap, authorised: str | tuple[str, ...] | None, where: str) -> RuleSet:
    root = Section(data, "")
    root.only(_TOP_KEYS)
    version = root.raw("version")
    if not isinstance(version, str | int | float) or isinstance(version, bool) or not str(version).strip():
        raise root.error("version", "the rule pack needs a non-empty `version`")
    hours_rules = hours.compile_hours(root.section("hours"), root.section("holidays", default_empty=True))
    return RuleSet(
        pack=where,
        version=str(version),
        normaliser=_normaliser(root.section("numbering", default_empty=True)),
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
