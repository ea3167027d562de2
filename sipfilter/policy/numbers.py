"""Normalise the numbers sipfilter sees (URI user parts, tel numbers, national, +33, 0033, 33…) to E.164.

Reads numbers, never SIP: the B2BUA hands in the user part, host and phone-context the SIP core parsed.
Fast path for common French digit forms, bounded LRU cache, phonenumbers only for the odd ones; never raises.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

# Kinds of number.
E164 = "e164"
SHORT = "short"  # 3BPQ-style short number, kept as its digits
ANONYMOUS = "anonymous"  # identity withheld or no user part
INVALID = "invalid"

_SEPARATORS = str.maketrans("", "", " -.()/\t")
# fullmatch, not ^…$: "$" would also match before a trailing newline.
_DIGITS = re.compile(r"\+?[0-9]+").fullmatch


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

    `overseas` maps the first digits of a 9-digit national significant number to the E.164 country code that
    really serves it (0692… is +262 692…, not +33 692…)."""

    def __init__(
        self,
        country_code: str = "+33",
        overseas: Mapping[str, str] | None = None,
        short_number_pattern: str = r"^3[0-9]{3}$",
        anonymous_users: Iterable[str] = ("anonymous", "restricted", "unavailable", "unknown", "private"),
        anonymous_hosts: Iterable[str] = ("anonymous.invalid",),
        cache_size: int = 32_768,  # ~380 bytes an entry: callers hit, callees mostly do not
    ):
        self.country_code = country_code
        self._cc_digits = country_code.lstrip("+")
        self._overseas = dict(overseas or {})
        self._overseas_lengths = sorted({len(k) for k in self._overseas}, reverse=True)
        self._overseas_codes = tuple(sorted(set(self._overseas.values())))
        self._short_re = re.compile(short_number_pattern)
        self._anon_users = frozenset(u.lower() for u in anonymous_users)
        self._anon_hosts = frozenset(h.lower() for h in anonymous_hosts)
        # Bounded caches: numbers repeat (caller IDs always, callees across retries).
        self.number = lru_cache(maxsize=cache_size)(self._number_uncached)  # type: ignore[method-assign]
        self.read = lru_cache(maxsize=cache_size)(self._read)  # type: ignore[method-assign]

    # -- public ------------------------------------------------------------------------------------
    def read(self, user: str, host: str = "", context: str = "", region: str = "FR") -> Number:
        """The number of one URI as the SIP core parsed it; cached (a campaign shows the same caller IDs on
        every call). `user` is a sip:/sips: user part as unescaped (telephone-subscriber ;parameters
        included), a tel: URI's number or a bare number; `host` the URI's host ("" for tel: and numbers);
        `context` a tel: URI's phone-context. Anonymous users and hosts give kind ANONYMOUS.

        A phone-context that reads the number differently from the number alone makes it INVALID: the
        carrier may not honour the context (a tel: Request-URI loses it on the B-leg), so the policy must
        not decide on a number other than the one dialled. Local numbers of the pack's own country pass."""
        return self._read(user, host, context, region)

    def read_callee(self, user: str, host: str = "", context: str = "", region: str = "FR") -> Number:
        """read() without the cache: a callee is nearly always seen for the first time (a retry comes days
        later), so caching it would only evict the caller IDs, which repeat on every call of a campaign."""
        return self._read(user, host, context, region)

    def number(self, digits: str, region: str = "FR", context: str = "") -> Number:
        """A bare number (separators allowed) → Number; cached."""
        return self._number_uncached(digits, region, context)

    def e164(self, text: str, region: str = "FR") -> str | None:
        """Convenience for importers: the E.164 of a bare number, or None when not a valid full number."""
        n = self.read(text, "", "", region)
        return n.e164 if n.kind == E164 else None

    # -- internals ---------------------------------------------------------------------------------
    def _read(self, user: str, host: str = "", context: str = "", region: str = "FR") -> Number:
        if not context and region == "FR" and self._cc_digits == "33":
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
        if region == "FR" and self._cc_digits == "33":
            nsn = self._french_nsn(digits)
            if nsn is not None:
                return Number(raw, self._apply_overseas(nsn), E164)
            if digits.startswith("+") and self._overseas_codes:
                for code in self._overseas_codes:
                    if digits.startswith(code) and len(digits) == len(code) + 9 and digits[len(code)] != "0":
                        return Number(raw, digits, E164)
        return self._slow(raw, digits, region)

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
        return Number(user, self._apply_overseas(user[-9:]), E164)

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

    def _apply_overseas(self, nsn: str) -> str:
        for length in self._overseas_lengths:
            code = self._overseas.get(nsn[:length])
            if code is not None:
                return code + nsn
        return self.country_code + nsn

    def _slow(self, raw: str, digits: str, region: str) -> Number:
        try:
            parsed = phonenumbers.parse(digits, region)
        except phonenumbers.NumberParseException as exc:
            return Number(raw, "", INVALID, str(exc))
        if not phonenumbers.is_valid_number(parsed):
            return Number(raw, "", INVALID, "not a valid number for its country")
        e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        if e164.startswith(self.country_code) and self._cc_digits == "33":
            e164 = self._apply_overseas(e164[3:])
        return Number(raw, e164, E164)
