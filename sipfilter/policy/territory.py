"""Which territory a number of the French numbering plan belongs to, compiled from phonenumbers' metadata.

Metropolitan France and its overseas departments and collectivities (Réunion, Mayotte, Guadeloupe,
Saint-Barthélemy, Saint-Martin, Guyane, Martinique) share one national numbering plan: a 10-digit national
number `0` + 9 digits can belong to any of them, and only the number ranges tell which (0262… Réunion, 0639…
Mayotte, 0709 2x Réunion, 0976 2x/3x Réunion, …), while their E.164 country codes differ (+33, +262, +590,
+594, +596). This module turns phonenumbers' per-region number patterns into one prefix table, so that the
call path classifies a number with a handful of dict lookups and never runs a regular expression.

The table is exact: a 9-digit national significant number is valid for a region here if and only if
`phonenumbers.is_valid_number_for_region` says so (tests/policy/test_territory.py checks it over every range).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers
from phonenumbers.phonemetadata import PhoneMetadata

NSN_LENGTH = 9  # national significant numbers of every region of the French plan
_DIGITS = frozenset("0123456789")
# The number types phonenumbers' is_valid_number accepts (any of them, within the general pattern).
_TYPES = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan", "voicemail",
          "fixed_line", "mobile")

Box = tuple[frozenset[str], ...]  # one digit set per position: a regular expression branch of fixed length


class PatternError(ValueError):
    """A phonenumbers pattern uses syntax this compiler does not know (a newer metadata release)."""


class PlanError(ValueError):
    """A plan setting that cannot be used; `field` names it (shared_plan, home_first, blocks, also_in)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# -- the regular expressions of phonenumbers' metadata, expanded into boxes --------------------------------
# They use digits, \d, [...] classes with ranges, (...) and (?:...) groups, | and the quantifiers ?, {n},
# {n,m}; anything else raises PatternError.


class _Parser:
    def __init__(self, pattern: str):
        self.text = pattern
        self.pos = 0

    def fail(self, what: str) -> PatternError:
        return PatternError(f"{what} at {self.pos} in {self.text!r}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def alternation(self) -> list[Box]:
        out = self.sequence()
        while self.peek() == "|":
            self.pos += 1
            out.extend(self.sequence())
        return out

    def sequence(self) -> list[Box]:
        out: list[Box] = [()]
        while self.peek() not in ("", "|", ")"):
            atom = self.quantified(self.atom())
            out = [a + b for a in out for b in atom if len(a) + len(b) <= NSN_LENGTH]
        return out

    def atom(self) -> list[Box]:
        ch = self.peek()
        if ch.isdigit():
            self.pos += 1
            return [(frozenset(ch),)]
        if ch == "\\":
            if self.text[self.pos : self.pos + 2] != "\\d":
                raise self.fail("unknown escape")
            self.pos += 2
            return [(_DIGITS,)]
        if ch == "[":
            return [(self.char_class(),)]
        if ch == "(":
            self.pos += 1
            if self.text.startswith("?:", self.pos):
                self.pos += 2
            inner = self.alternation()
            if self.peek() != ")":
                raise self.fail("unclosed group")
            self.pos += 1
            return inner
        raise self.fail(f"unexpected {ch!r}")

    def char_class(self) -> frozenset[str]:
        self.pos += 1
        out: set[str] = set()
        while self.peek() != "]":
            ch = self.peek()
            if not ch.isdigit():
                if self.text.startswith("\\d", self.pos):
                    out |= _DIGITS
                    self.pos += 2
                    continue
                raise self.fail(f"unexpected {ch!r} in a class")
            if self.text[self.pos + 1 : self.pos + 2] == "-":
                last = self.text[self.pos + 2 : self.pos + 3]
                if not last.isdigit():
                    raise self.fail("bad range")
                out |= {str(d) for d in range(int(ch), int(last) + 1)}
                self.pos += 3
            else:
                out.add(ch)
                self.pos += 1
        self.pos += 1
        return frozenset(out)

    def quantified(self, atom: list[Box]) -> list[Box]:
        ch = self.peek()
        if ch == "?":
            self.pos += 1
            return [(), *atom]
        if ch != "{":
            return atom
        end = self.text.index("}", self.pos)
        lo_text, _, hi_text = self.text[self.pos + 1 : end].partition(",")
        lo = int(lo_text)
        hi = int(hi_text) if hi_text else lo
        self.pos = end + 1
        out: list[Box] = []
        for count in range(lo, hi + 1):
            reps: list[Box] = [()]
            for _ in range(count):
                reps = [a + b for a in reps for b in atom if len(a) + len(b) <= NSN_LENGTH]
            out.extend(reps)
        return out


def boxes(pattern: str, length: int = NSN_LENGTH) -> list[Box]:
    """The branches of a phonenumbers pattern that match numbers of `length` digits."""
    parser = _Parser(pattern)
    out = parser.alternation()
    if parser.pos != len(pattern):
        raise parser.fail("unbalanced )")
    return [b for b in out if len(b) == length]


def _desc_boxes(desc: object) -> list[Box]:
    pattern = getattr(desc, "national_number_pattern", None)
    lengths = getattr(desc, "possible_length", None) or ()
    if not pattern or (lengths and NSN_LENGTH not in lengths):
        return []
    return boxes(pattern)


def _prefix_box(prefix: str) -> Box:
    return tuple(frozenset(d) for d in prefix) + (_DIGITS,) * (NSN_LENGTH - len(prefix))


# -- the prefix table -------------------------------------------------------------------------------------


def _constrained(box: Box) -> int:
    """How many leading digits a box constrains (the rest are any digit)."""
    n = len(box)
    while n and box[n - 1] == _DIGITS:
        n -= 1
    return n


def _decide(features: Sequence[list[Box]]) -> dict[str, tuple[int, ...]]:
    """For every feature (a union of boxes), which 9-digit numbers it holds and how specifically, as the
    shortest prefixes that settle every feature at once: prefix → one int per feature, 0 when the feature
    does not hold the prefix's numbers, else 1 + the number of leading digits its most specific box holding
    them constrains (a longer prefix is a more specific range). They cover every 9-digit string once."""
    table: dict[str, tuple[int, ...]] = {}

    def walk(prefix: str, live: list[list[Box]]) -> None:
        depth = len(prefix)
        values: list[int] = []
        for feature in live:
            if not feature:
                values.append(0)
            elif all(_constrained(box) <= depth for box in feature):
                values.append(1 + max(_constrained(box) for box in feature))
            else:
                break
        else:
            table[prefix] = tuple(values)
            return
        for digit in "0123456789":
            walk(prefix + digit, [[b for b in feature if digit in b[depth]] for feature in live])

    walk("", [list(f) for f in features])
    return table


@dataclass(frozen=True, slots=True, init=False)
class Resolution:
    """What a national significant number is, given how it was presented (national form or a country code)."""

    code: str  # E.164 country code with "+", "" when the number is not valid
    regions: tuple[str, ...]  # candidate territories (ISO 3166 codes), in the plan's order

    def __init__(self, code: str, regions: tuple[str, ...]) -> None:
        # Written out so that mypyc compiles it (see sipfilter/compiled.py).
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "regions", regions)


_INVALID = Resolution("", ())


class NumberingPlan:
    """A national numbering plan shared by a home region and overseas regions (see the module docstring).

    - `shared`: the regions whose numbers also have the home country's 10-digit national form.
    - `home_first`: national prefixes (of the 9 digits) that stay in the home region when valid there,
      although an overseas region lists them too (non-geographic special numbers, 08…: national wherever one
      calls from). Every other national number valid in an overseas region belongs to that region
      (phonenumbers' home patterns are looser than the plan: +33 9… is "valid" for every 09 number).
    - `blocks`: national prefixes assigned as a whole to some regions (overseas NPV 09 475…09 479); a number
      in one is theirs, and not valid unless phonenumbers lists it for one of them.
    - `also`: E.164 prefixes whose numbers may live in further regions (+262 692/693: Réunion or Mayotte).
    """

    def __init__(
        self,
        home: str = "FR",
        shared: Sequence[str] = ("RE", "YT", "GP", "BL", "MF", "GF", "MQ"),
        home_first: Sequence[str] = ("8",),
        blocks: Mapping[str, Sequence[str]] | None = None,
        also: Mapping[str, Sequence[str]] | None = None,
    ):
        blocks = dict(blocks or {})
        also = dict(also or {})
        self.home = home
        self.regions = (home, *[r for r in shared if r != home])
        self.codes: dict[str, str] = {}
        features: list[list[Box]] = []
        for region in self.regions:
            meta = PhoneMetadata.metadata_for_region(region)
            if meta is None:
                raise PlanError("shared_plan", f"phonenumbers does not know region {region!r}")
            self.codes[region] = f"+{meta.country_code}"
            lengths = getattr(meta.general_desc, "possible_length", None) or ()
            if lengths and NSN_LENGTH not in lengths:
                raise PlanError("shared_plan", f"{region}: its national numbers are not {NSN_LENGTH} digits")
            features.append(_desc_boxes(meta.general_desc))
            features.append([b for t in _TYPES for b in _desc_boxes(getattr(meta, t, None))])
        self.home_code = self.codes[home]
        self.country_codes = tuple(dict.fromkeys(self.codes.values()))
        self._blocks = sorted(blocks.items(), key=lambda kv: -len(kv[0]))
        for prefix, regions in self._blocks:
            _check_prefix(prefix, "blocks")
            unknown = [r for r in regions if r not in self.codes]
            if unknown or not regions:
                raise PlanError("blocks", f"block {prefix}: regions must be among {', '.join(self.regions)}")
            if len({self.codes[r] for r in regions}) != 1:
                raise PlanError("blocks", f"block {prefix}: its regions have different country codes")
        self._also: list[tuple[str, str, tuple[str, ...]]] = []  # (code, national prefix, regions)
        for prefix, regions in also.items():
            code = next((c for c in self.country_codes if prefix.startswith(c)), None)
            if code is None or not regions or any(self.codes.get(r) != code for r in regions):
                raise PlanError("also_in", f"{prefix}: expected an E.164 prefix of "
                                f"{', '.join(self.country_codes)} and regions with that country code")
            _check_prefix(prefix[len(code) :], "also_in")
            self._also.append((code, prefix[len(code) :], tuple(regions)))
        for prefix in home_first:
            _check_prefix(prefix, "home_first")
        self._home_first = tuple(home_first)
        extra = [p for p, _ in self._blocks] + [p for _, p, _ in self._also] + list(self._home_first)
        decided = _decide(features + [[_prefix_box(p)] for p in extra])
        # Resolutions per decided prefix and per way of presenting it ("": national form, or a country code),
        # and under the key "valid" the regions phonenumbers lists the number for (as a Resolution's regions).
        self._table: dict[str, dict[str, Resolution]] = {}
        shared_memo: dict[tuple[int, ...], dict[str, Resolution]] = {}
        n = len(self.regions)
        for prefix, values in decided.items():
            hit = shared_memo.get(values)
            if hit is None:
                valid = {
                    r: values[2 * i + 1]
                    for i, r in enumerate(self.regions)
                    if values[2 * i] and values[2 * i + 1]
                }
                flags = [bool(v) for v in values[2 * n :]]
                hit = shared_memo[values] = {
                    key: self._resolve(key, valid, flags) for key in ("", *self.country_codes)
                }
                hit["valid"] = Resolution("", tuple(valid))  # every region listing it, in plan order
            self._table[prefix] = hit
        # Most numbers are settled by their first two digits: one lookup answers them (None: look deeper).
        self._first2: dict[str, dict[str, Resolution] | None] = {
            a + b: self._table.get(a + b, self._table.get(a)) for a in "0123456789" for b in "0123456789"
        }
        self._deeper = tuple(sorted({len(p) for p in self._table if len(p) > 2}))

    def _resolve(self, given: str, valid: dict[str, int], flags: Sequence[bool]) -> Resolution:
        """`valid`: the regions listing the number → how specific their range is (see _decide)."""
        nb = len(self._blocks)
        hits = zip(self._blocks, flags[:nb], strict=True)
        block = next((regions for (_, regions), hit in hits if hit), None)
        also_flags = flags[nb : nb + len(self._also)]
        home_first = any(flags[nb + len(self._also) :])
        # The national form (and the home country code, which carriers also put before overseas numbers).
        if block is not None:
            regions, code = _most_specific([r for r in valid if r in block], valid), self.codes[block[0]]
        elif home_first and self.home in valid:
            regions, code = [self.home], self.home_code
        else:
            # The overseas territories that list the number with the most specific range (longest prefix, as
            # in an allocation table: 0976 2x is Réunion's, within Guyane's broader 0976); when several tie
            # with different country codes (0939 6x: Guadeloupe's and Guyane's VoIP), the first one's code
            # makes the E.164 form, and all of them remain candidates (all their hours and holidays apply).
            regions = _most_specific([r for r in valid if r != self.home], valid)
            code = self.codes[regions[0]] if regions else self.home_code
            if not regions and self.home in valid:
                regions = [self.home]
        if given not in ("", self.home_code) and code != given:
            # An E.164 number of another of the plan's codes: the regions of that code that list it.
            code = given
            regions = [r for r in valid if self.codes[r] == code and r != self.home]
            if block is not None and self.codes[block[0]] == code:
                regions = [r for r in regions if r in block]
            regions = _most_specific(regions, valid)
        if not regions:
            return _INVALID
        for (also_code, _, more), hit in zip(self._also, also_flags, strict=True):
            if hit and also_code == code:
                regions += [r for r in more if r not in regions]
        return Resolution(code, tuple(regions))

    def resolve(self, nsn: str, given: str = "") -> Resolution:
        """The 9-digit national significant number `nsn` as presented in national form (`given` "") or after a
        country code of this plan (`given` "+262", …). Invalid numbers resolve to code ""."""
        hit = self._first2.get(nsn[:2])
        if hit is None:
            for length in self._deeper:
                hit = self._table.get(nsn[:length])
                if hit is not None:
                    break
            else:
                return _INVALID
        return hit.get(given, _INVALID)

    def valid_regions(self, nsn: str) -> tuple[str, ...]:
        """The regions whose phonenumbers patterns accept the 9-digit `nsn` (before this plan's own rules)."""
        return self.resolve(nsn, "valid").regions

    def resolve_e164(self, e164: str) -> Resolution | None:
        """An E.164 string of one of this plan's country codes → its Resolution; None for other countries."""
        for code in self.country_codes:
            if e164.startswith(code):
                nsn = e164[len(code) :]
                if len(nsn) != NSN_LENGTH or not nsn.isdigit() or not nsn.isascii() or nsn[0] == "0":
                    return _INVALID
                return self.resolve(nsn, code)
        return None

    def prefixes(self) -> tuple[str, ...]:
        """The table's prefixes: every 9-digit number starts with exactly one of them (tests, tools)."""
        return tuple(self._table)


def _most_specific(regions: list[str], specificity: Mapping[str, int]) -> list[str]:
    best = max((specificity[r] for r in regions), default=0)
    return [r for r in regions if specificity[r] == best]


def _check_prefix(prefix: str, field: str) -> None:
    if not prefix.isdigit() or not 1 <= len(prefix) <= NSN_LENGTH:
        raise PlanError(field, f"{prefix!r}: expected 1 to {NSN_LENGTH} digits of a national number")


def region_of(e164: str) -> str | None:
    """The region phonenumbers gives a valid E.164 number of any country (for numbers outside a plan)."""
    try:
        parsed = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.region_code_for_number(parsed)


def zones_of(e164: str) -> tuple[str, ...]:
    """The IANA zones phonenumbers gives a number (empty when unknown)."""
    from phonenumbers import timezone as pn_timezone

    try:
        names: Iterable[str] = pn_timezone.time_zones_for_number(phonenumbers.parse(e164))
    except phonenumbers.NumberParseException:
        return ()
    return tuple(n for n in names if n and n != "Etc/Unknown")


@lru_cache(maxsize=16)
def plan_for(
    home: str,
    shared: tuple[str, ...],
    home_first: tuple[str, ...],
    blocks: tuple[tuple[str, tuple[str, ...]], ...],
    also: tuple[tuple[str, tuple[str, ...]], ...],
) -> NumberingPlan:
    """One NumberingPlan per distinct setting (compiling one takes a tenth of a second: trunks share it)."""
    return NumberingPlan(home, shared, home_first, dict(blocks), dict(also))


def french_plan() -> NumberingPlan:
    """The plan with phonenumbers' French regions and no pack data (CLI helpers without a config)."""
    return plan_for("FR", ("RE", "YT", "GP", "BL", "MF", "GF", "MQ"), ("8",), (), ())
