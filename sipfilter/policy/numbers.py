"""Normalise the numbers sipfilter sees (URI user parts, tel numbers, national, +33, 0033, 33…) to E.164.

Reads numbers, never SIP: the B2BUA hands in the user part, host and phone-context the SIP core parsed.
Every number is validated: French-plan numbers (metropolitan and overseas) against the prefix table compiled
from phonenumbers' metadata (territory.py), others with phonenumbers itself. Fast path for common French digit
forms, bounded LRU cache, phonenumbers only for the odd ones; never raises.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

from sipfilter.policy.territory import NumberingPlan, french_plan

# Kinds of number.
E164 = "e164"
SHORT = "short"  # 3BPQ-style short number, kept as its digits
ANONYMOUS = "anonymous"  # identity withheld or no user part
INVALID = "invalid"

_SEPARATORS = str.maketrans("", "", " -.()/\t")
_NOT_IN_PLAN = "not a valid number: no territory of the numbering plan lists it"
# fullmatch, not ^…$: "$" would also match before a trailing newline.
_DIGITS = re.compile(r"\+?[0-9]+").fullmatch


@dataclass(frozen=True, slots=True, init=False)
class Number:
    """One number as presented (`raw`) and as normalised (`e164`, "" unless kind is e164 or short)."""

    raw: str
    e164: str
    kind: str
    error: str

    def __init__(self, raw: str, e164: str, kind: str, error: str = "") -> None:
        # Written out so that mypyc compiles it (see sipfilter/compiled.py).
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "e164", e164)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "error", error)

    # Written out too: the P-Asserted-Identity numbers are part of the caller-ID rules' memo key.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Number):
            return NotImplemented
        mine = (self.raw, self.e164, self.kind, self.error)
        return mine == (other.raw, other.e164, other.kind, other.error)

    def __hash__(self) -> int:
        return hash((self.raw, self.e164, self.kind, self.error))

    @property
    def ok(self) -> bool:
        return self.kind == E164 or self.kind == SHORT


def _parse_params(text: str, into: dict[str, str]) -> None:
    for item in text.split(";"):
        if item:
            key, _, value = item.partition("=")
            into[key.strip().lower()] = value.strip()


@dataclass(frozen=True, slots=True)
class NumberReader:
    """How one trunk reads the numbers of a call: its rule pack's normaliser and the trunk's default region.

    Handed to whoever turns a call into CallFacts (the B2BUA, `sipfilter check`), which parse the SIP."""

    normaliser: Normaliser
    region: str = "FR"

    def caller(self, user: str, host: str = "", context: str = "") -> Number:
        """A caller identity (From, P-Asserted-Identity): cached, they repeat on every call."""
        return self.normaliser.read(user, host, context, self.region)

    def callee(self, user: str, host: str = "", context: str = "") -> Number:
        """The callee: uncached, a callee is nearly always new."""
        return self.normaliser.read_callee(user, host, context, self.region)


class Normaliser:
    """Turns presented numbers into E.164 strings with one country's national conventions (FR by default).

    `plan` says which territory of the national numbering plan a national number belongs to (0692… is
    +262 692…, not +33 692…) and whether it is valid at all; by default phonenumbers' French regions."""

    def __init__(
        self,
        country_code: str = "+33",
        plan: NumberingPlan | None = None,
        short_number_pattern: str = r"^(?:3[0-9]{3}|118[0-9]{3})$",
        anonymous_users: Iterable[str] = ("anonymous", "restricted", "unavailable", "unknown", "private"),
        anonymous_hosts: Iterable[str] = ("anonymous.invalid",),
        cache_size: int = 32_768,  # ~380 bytes an entry: callers hit, callees mostly do not
    ):
        self.country_code = country_code
        self._cc_digits = country_code.lstrip("+")
        if plan is None and country_code == "+33":
            plan = french_plan()
        # The national forms read here are France's (trunk prefix 0, 9-digit numbers): a plan only for +33.
        self.plan = plan if plan is not None and plan.home_code == country_code == "+33" else None
        self._resolve = self.plan.resolve if self.plan is not None else None
        # Trunk regions whose national numbers are this plan's (a dialer in Réunion dials 06… as in Paris).
        self._plan_regions = frozenset(self.plan.regions) if self.plan is not None else frozenset()
        self._short_re = re.compile(short_number_pattern)
        self._anon_users = frozenset(u.lower() for u in anonymous_users)
        self._anon_hosts = frozenset(h.lower() for h in anonymous_hosts)
        # Bounded caches: numbers repeat (caller IDs always, callees across retries). Attributes, not methods
        # replaced at run time: a class compiled by mypyc (sipfilter.compiled) has fixed methods.
        self.number_cache = lru_cache(maxsize=cache_size)(self._number_uncached)
        self.read_cache = lru_cache(maxsize=cache_size)(self._read)

    # -- public ------------------------------------------------------------------------------------
    def read(self, user: str, host: str = "", context: str = "", region: str = "FR") -> Number:
        """The number of one URI as the SIP core parsed it; cached (a campaign shows the same caller IDs on
        every call). `user` is a sip:/sips: user part as unescaped (telephone-subscriber ;parameters
        included), a tel: URI's number or a bare number; `host` the URI's host ("" for tel: and numbers);
        `context` a tel: URI's phone-context. Anonymous users and hosts give kind ANONYMOUS.

        A phone-context that reads the number differently from the number alone makes it INVALID: the
        carrier may not honour the context (a tel: Request-URI loses it on the B-leg), so the policy must
        not decide on a number other than the one dialled. Local numbers of the pack's own country pass."""
        return self.read_cache(user, host, context, region)

    def read_callee(self, user: str, host: str = "", context: str = "", region: str = "FR") -> Number:
        """read() without the cache: a callee is nearly always seen for the first time (a retry comes days
        later), so caching it would only evict the caller IDs, which repeat on every call of a campaign."""
        return self._read(user, host, context, region)

    def number(self, digits: str, region: str = "FR", context: str = "") -> Number:
        """A bare number (separators allowed) → Number; cached."""
        return self.number_cache(digits, region, context)

    def e164(self, text: str, region: str = "FR") -> str | None:
        """Convenience for importers: the E.164 of a bare number, or None when not a valid full number."""
        n = self.read(text, "", "", region)
        return n.e164 if n.kind == E164 else None

    # -- internals ---------------------------------------------------------------------------------
    def _read(self, user: str, host: str = "", context: str = "", region: str = "FR") -> Number:
        if not context and region in self._plan_regions:
            fast = self._parse_fast(user, host)
            if fast is not None:
                return fast
        number, sep, rest = user.partition(";")
        if sep:
            params: dict[str, str] = {}
            _parse_params(rest, params)
            context = params.get("phone-context", context)
        bare = number.strip()
        if not bare or bare.lower() in self._anon_users or host.lower() in self._anon_hosts:
            return Number(user, "", ANONYMOUS, "anonymous")
        # Not through the `number` cache: a URI miss is almost always a bare-number miss too.
        n = self._number_uncached(number, region, context, user)
        if context and not number.lstrip().startswith("+"):
            alone = self._number_uncached(number, region, "", user)
            if (alone.kind, alone.e164) != (n.kind, n.e164):
                return Number(
                    user, "", INVALID,
                    f"phone-context {context[:40]!r} makes it {n.e164 or n.kind}, the number alone reads "
                    f"{alone.e164 or alone.kind}: write the number in global form (+…)",
                )  # fmt: skip
        return n

    def _number_uncached(self, digits: str, region: str = "FR", context: str = "", raw: str = "") -> Number:
        raw = raw or digits
        digits = digits.translate(_SEPARATORS)
        if not _DIGITS(digits):
            return Number(raw, "", INVALID, "not a telephone number")
        if not digits.startswith("+") and context.startswith("+"):
            # RFC 3966 local number: phone-context names the country (or a longer prefix).
            ctx = context.translate(_SEPARATORS)
            if _DIGITS(ctx):
                local = digits[1:] if digits.startswith("0") else digits
                digits = ctx + local
        if self._short_re.match(digits):
            return Number(raw, digits, SHORT)
        if region in self._plan_regions:
            nsn = self._french_nsn(digits)
            if nsn is not None:
                return self._national(raw, nsn)
            if digits.startswith("+"):
                res = self.plan.resolve_e164(digits) if self.plan is not None else None
                if res is not None:
                    return Number(raw, digits, E164) if res.code else Number(raw, "", INVALID, _NOT_IN_PLAN)
        return self._slow(raw, digits, region)

    def _national(self, raw: str, nsn: str) -> Number:
        """A French national number (or +33 form) by its 9 digits: the territory's E.164 form, or invalid."""
        assert self._resolve is not None
        code = self._resolve(nsn).code
        return Number(raw, code + nsn, E164) if code else Number(raw, "", INVALID, _NOT_IN_PLAN)

    def _parse_fast(self, user: str, host: str = "") -> Number | None:
        """The numbers dialers nearly always send (+33 or 0 and nine digits, nothing else, no anonymous host)
        with a few C string calls; None for anything else, which the general path reads. Callees are mostly
        first seen (cache misses): this is on most calls. Answers exactly what the general path answers
        (tests/policy/test_numbers_fast.py checks it)."""
        if len(user) == 12:
            if user[:3] != "+33" or user[3] == "0":
                return None
        elif len(user) != 10 or user[0] != "0" or user[1] == "0":
            return None
        digits = user[1:]
        if not (digits.isdigit() and digits.isascii()):
            return None
        if user in self._anon_users or self._short_re.match(user):
            return None
        if host and host.lower() in self._anon_hosts:
            return None
        return self._national(user, user[-9:])

    def _french_nsn(self, d: str) -> str | None:
        """The 9-digit national significant number of a French number in any common form, or None."""
        if d.startswith("+33"):
            nsn = d[3:]
        elif d.startswith("0033"):
            nsn = d[4:]
        elif d.startswith("33") and len(d) == 11:
            nsn = d[2:]
        elif d.startswith("0") and len(d) == 10:
            nsn = d[1:]
        else:
            return None
        if len(nsn) == 10 and nsn[0] == "0":  # "+33 0 6…": a trunk prefix wrongly kept
            nsn = nsn[1:]
        if len(nsn) != 9 or nsn[0] == "0":
            return None
        return nsn

    def _slow(self, raw: str, digits: str, region: str) -> Number:
        try:
            parsed = phonenumbers.parse(digits, region)
        except phonenumbers.NumberParseException as exc:
            return Number(raw, "", INVALID, str(exc))
        nsn = str(parsed.national_number)
        if self.plan is not None and len(nsn) == 9 and not parsed.italian_leading_zero:
            # A number of the plan reached by another form (00262…, 0033…, a trunk with another region): the
            # plan decides, as for every other form (+33 262… is Réunion's +262 262…).
            code = f"+{parsed.country_code}"
            if code == self.country_code:
                return self._national(raw, nsn)
            res = self.plan.resolve_e164(code + nsn)
            if res is not None:
                return Number(raw, code + nsn, E164) if res.code else Number(raw, "", INVALID, _NOT_IN_PLAN)
        if not phonenumbers.is_valid_number(parsed):
            return Number(raw, "", INVALID, "not a valid number for its country")
        return Number(raw, phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), E164)
