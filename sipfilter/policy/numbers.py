"""Normalise the numbers sipfilter sees (sip:/sips:/tel: URIs, national, +33, 0033, 33…) to E.164.

Every number is validated: French-plan numbers (metropolitan and overseas) against the prefix table compiled
from phonenumbers' metadata (territory.py), others with phonenumbers itself. Fast path for common French digit
forms, bounded LRU cache, phonenumbers only for the odd ones; never raises.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

import phonenumbers

from sipfilter.policy.territory import NumberingPlan, french_plan

# Kinds of number.
E164 = "e164"
SHORT = "short"  # 3BPQ-style short number, kept as its digits
ANONYMOUS = "anonymous"  # identity withheld or no user part
INVALID = "invalid"

_SEPARATORS = str.maketrans("", "", " -.()/\t")
_NOT_IN_PLAN = "not a valid number: no territory of the numbering plan lists it"
_DIGITS_RE = re.compile(r"^\+?[0-9]+$")


@dataclass(frozen=True, slots=True)
class Number:
    """One number as presented (`raw`) and as normalised (`e164`, "" unless kind is e164 or short)."""

    raw: str
    e164: str
    kind: str
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == E164 or self.kind == SHORT


def split_uri_user(text: str) -> tuple[str, str, dict[str, str]] | None:
    """From a name-addr, addr-spec, tel: URI or bare number, return (user, host, params of the user part).

    Returns None when a URI carries no user part (e.g. `sip:host`). `host` is "" for tel: and bare numbers."""
    text = text.strip()
    if "<" in text:
        start = text.index("<") + 1
        end = text.find(">", start)
        text = text[start:] if end < 0 else text[start:end]
    lower = text[:5].lower()
    params: dict[str, str] = {}
    if lower.startswith("tel:"):
        body = text[4:]
        number, _, rest = body.partition(";")
        _parse_params(rest, params)
        return unquote(number), "", params
    if lower.startswith(("sip:", "sips:")):
        body = text[text.index(":") + 1 :]
        if "@" not in body:
            return None
        userinfo, _, hostpart = body.rpartition("@")
        user, _, uparams = userinfo.partition(";")
        user = user.partition(":")[0]  # drop a password
        _parse_params(uparams, params)
        host = hostpart.partition(";")[0].partition("?")[0].partition(":")[0].lower()
        if hostpart.startswith("["):
            host = hostpart[: hostpart.find("]") + 1].lower()
        return unquote(user), host, params
    # A bare number, possibly with ;phone-context.
    number, _, rest = text.partition(";")
    _parse_params(rest, params)
    return number, "", params


def _parse_params(text: str, into: dict[str, str]) -> None:
    for item in text.split(";"):
        if item:
            key, _, value = item.partition("=")
            into[key.strip().lower()] = value.strip()


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
        # Bounded caches: numbers repeat (caller IDs always, callees across retries).
        self.number = lru_cache(maxsize=cache_size)(self._number_uncached)  # type: ignore[method-assign]
        self.parse = lru_cache(maxsize=cache_size)(self._parse_uncached)  # type: ignore[method-assign]

    # -- public ------------------------------------------------------------------------------------
    def parse(self, text: str, region: str = "FR") -> Number:
        """Any presented form (URI, name-addr, bare number) → Number; cached."""
        return self._parse_uncached(text, region)

    def parse_callee(self, text: str, region: str = "FR") -> Number:
        """parse() without the cache: a callee is nearly always seen for the first time (a retry comes days
        later), so caching it would only evict the caller IDs, which repeat on every call of a campaign."""
        return self._parse_uncached(text, region)

    def number(self, digits: str, region: str = "FR", context: str = "") -> Number:
        """A bare number (separators allowed) → Number; cached."""
        return self._number_uncached(digits, region, context)

    def e164(self, text: str, region: str = "FR") -> str | None:
        """Convenience for importers: the E.164 string, or None when not a valid full number."""
        n = self.parse(text, region)
        return n.e164 if n.kind == E164 else None

    # -- internals ---------------------------------------------------------------------------------
    def _parse_uncached(self, text: str, region: str = "FR") -> Number:
        if region in self._plan_regions:
            fast = self._parse_fast(text)
            if fast is not None:
                return fast
        parts = split_uri_user(text)
        if parts is None:
            return Number(text, "", ANONYMOUS, "no user part in the URI")
        user, host, params = parts
        if host in self._anon_hosts or user.strip().lower() in self._anon_users or not user.strip():
            return Number(text, "", ANONYMOUS, "anonymous")
        # Not through the `number` cache: a URI miss is almost always a bare-number miss too.
        return self._number_uncached(user, region, params.get("phone-context", ""), text)

    def _number_uncached(self, digits: str, region: str = "FR", context: str = "", raw: str = "") -> Number:
        raw = raw or digits
        digits = digits.translate(_SEPARATORS)
        if not _DIGITS_RE.match(digits):
            return Number(raw, "", INVALID, "not a telephone number")
        if not digits.startswith("+") and context.startswith("+"):
            # RFC 3966 local number: phone-context names the country (or a longer prefix).
            ctx = context.translate(_SEPARATORS)
            if _DIGITS_RE.match(ctx):
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

    def _parse_fast(self, text: str) -> Number | None:
        """The forms dialers nearly always send (`sip:` or `tel:` URI, or a bare number, whose user part is
        +33 or 0 and nine digits, nothing else) with a few C string calls; None for anything else, which the
        general path parses. Callees are mostly first seen (cache misses): this is on most calls.
        Answers exactly what the general path answers (tests/policy/test_numbers_fast.py checks it)."""
        if text[:4] == "sip:":
            at = text.rfind("@")
            if at < 0 or "<" in text or text[-1:].isspace():
                return None
            user = text[4:at]
            hostpart = text[at + 1 :]
            host = hostpart.partition(";")[0].partition("?")[0].partition(":")[0].lower()
            if hostpart.startswith("[") or host in self._anon_hosts:
                return None
        elif text[:4] == "tel:":
            user = text[4:]
        else:
            user = text
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
        return self._national(text, user[-9:])

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
