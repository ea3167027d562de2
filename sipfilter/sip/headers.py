"""Header fields: the ordered raw Headers container, header names (compact forms, list headers), and the
typed values parsed from it on demand (their parsers live in header_values.py and are re-exported here).

Raw values are relayed exactly as received; typed parsing happens only when asked for, raises ParseError,
and never reads bytes or touches the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import repeat
from typing import Any, Final

import sipfilter.sip.grammar as g
from sipfilter.sip.header_values import (
    BRANCH_COOKIE,
    CSeq,
    MediaType,
    NameAddr,
    Reason,
    RetryAfter,
    Via,
    WarningValue,
    parse_cseq,
    parse_media_type,
    parse_name_addr,
    parse_name_addrs,
    parse_params,
    parse_reasons,
    parse_retry_after,
    parse_token_set,
    parse_vias,
    parse_warnings,
    quote,
    split_list,
    unquote,
)

__all__ = [
    "ABSENT",
    "BRANCH_COOKIE",
    "COMPACT_FORMS",
    "LIST_HEADERS",
    "SEVERAL",
    "CSeq",
    "Headers",
    "MediaType",
    "NameAddr",
    "Reason",
    "RetryAfter",
    "Via",
    "WarningValue",
    "canonical_name",
    "parse_cseq",
    "parse_media_type",
    "parse_name_addr",
    "parse_name_addrs",
    "parse_params",
    "parse_reasons",
    "parse_retry_after",
    "parse_token_set",
    "parse_vias",
    "parse_warnings",
    "quote",
    "split_list",
    "unquote",
]


# RFC 3261 §7.3.3 and later RFCs (IANA "Header Fields" registry, compact forms).
COMPACT_FORMS: Final[Mapping[str, str]] = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "b": "referred-by",
    "d": "request-disposition",
    "j": "reject-contact",
}

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1): get_all() splits them.
LIST_HEADERS: Final[frozenset[str]] = frozenset(
    {
        "via", "contact", "route", "record-route", "path", "service-route", "allow", "supported",
        "require", "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
        "allow-events", "content-encoding", "content-language", "in-reply-to", "alert-info", "call-info",
        "error-info", "warning", "reason", "p-asserted-identity", "p-preferred-identity",
        "history-info", "accept-contact", "reject-contact", "security-client", "security-server",
        "security-verify", "p-associated-uri", "p-charging-function-addresses",
    }
)  # fmt: skip

# Names with a conventional spelling, used when a header is added by lower-case name.
_PRETTY: Final[Mapping[str, str]] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "p-asserted-identity": "P-Asserted-Identity",
    "p-preferred-identity": "P-Preferred-Identity",
    "mime-version": "MIME-Version",
}

# Header names already checked against the token grammar: a B2BUA writes the same few dozen names on every
# message it builds. Bounded, so that names a peer chooses cannot grow it without limit.
_TOKEN_NAMES: Final[set[str]] = set()
_TOKEN_NAMES_MAX: Final = 4096

ABSENT: Final = -1  # Headers.position(): no line has this name
SEVERAL: Final = -2  # Headers.position(): more than one line has it


def canonical_name(name: str) -> str:
    """Lower-case long form of a header name (compact forms expanded)."""
    low = name.lower()
    return COMPACT_FORMS.get(low, low) if len(low) == 1 else low


class Headers:
    """Ordered header lines (name as received, raw value). Lookup is case-insensitive, compact-aware.

    Values never contain CR or LF (folding is removed at parse time; set/add refuse them). Typed values
    parsed from these lines (typed_headers.py) are cached here and dropped on any change. Parsed messages
    keep the raw values until the (name, value) list is asked for: single lookups strip just the line they
    read.
    """

    __slots__ = ("_cache", "_items", "_keys", "_names", "_raw", "_where")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        lines: list[tuple[str, str]] = []
        self._items: list[tuple[str, str]] | None = lines
        self._keys: list[str] = []
        self._cache: dict[str, Any] = {}
        self._where: dict[str, int] | None = None  # see position()
        self._names: tuple[str, ...] = ()
        self._raw: tuple[str, ...] = ()
        for name, value in items:
            self._check(name, value)
            lines.append((name, value))  # names kept exactly as given
            self._keys.append(canonical_name(name))

    @classmethod
    def _trusted(cls, items: list[tuple[str, str]], keys: list[str]) -> Headers:
        # Lines already validated, keys already canonical. (Headers(), not cls.__new__: mypyc compiles no
        # __new__ call.)
        self = Headers()  # its cache is a new empty dict, its names and raw values are empty
        self._items = items
        self._keys = keys
        return self

    @classmethod
    def _lazy(cls, names: tuple[str, ...], raw: tuple[str, ...], keys: list[str]) -> Headers:
        # Parser fast path: names validated, keys canonical; `raw` values still carry the white space
        # around them. (name, value) tuples are only built when the whole list is asked for (_all).
        self = Headers()  # its cache is a new empty dict
        self._items = None
        self._keys = keys
        self._names = names
        self._raw = raw
        return self

    def _all(self) -> list[tuple[str, str]]:
        """The (name, value) list, built from the parsed lines on first use."""
        items = self._items
        if items is None:
            values = map(str.strip, self._raw, repeat(" \t"))
            items = self._items = list(zip(self._names, values, strict=True))
            self._names = self._raw = ()
        return items

    def _value(self, i: int) -> str:
        """Value of line i without building the whole list."""
        items = self._items
        if items is None:
            return self._raw[i].strip(" \t")
        return items[i][1]

    # --- reading -------------------------------------------------------------------------------------
    def position(self, key: str) -> int:
        """For a canonical key: the index of its only line, ABSENT, or SEVERAL.

        A message is read with a score of lookups (From, To, Call-ID, CSeq, Via, Max-Forwards...): one dict,
        built on the first and dropped on any change, answers each where a scan of the keys (and a second one
        for the index) compared every line's key."""
        where = self._where
        if where is None:
            where = {}
            for i, k in enumerate(self._keys):
                if where.setdefault(k, i) != i:  # one dict operation a line, two for a repeated name
                    where[k] = SEVERAL
            self._where = where
        return where.get(key, ABSENT)

    def get(self, name: str) -> str | None:
        """Raw value of the first line with this name, or None."""
        key = canonical_name(name)
        i = self.position(key)
        if i >= 0:
            return self._value(i)
        if i == ABSENT:
            return None
        return self._value(self._keys.index(key))

    def get_lines(self, name: str) -> list[str]:
        """Raw values of every line with this name, unsplit."""
        return self.lines_of(canonical_name(name))

    def lines_of(self, key: str) -> list[str]:
        """get_lines() for a canonical (lower-case, long-form) key: the parsers' fast path."""
        i = self.position(key)
        if i >= 0:
            return [self._value(i)]
        if i == ABSENT:
            return []
        return [self._value(i) for i, k in enumerate(self._keys) if k == key]

    def get_all(self, name: str) -> list[str]:
        """Every value of this header: repeated lines, and comma lists split for list headers."""
        key = canonical_name(name)
        lines = self.lines_of(key)
        if key not in LIST_HEADERS:
            return lines
        out: list[str] = []
        for line in lines:
            out.extend(split_list(line))
        return out

    def count(self, name: str) -> int:
        key = canonical_name(name)
        i = self.position(key)
        return 1 if i >= 0 else 0 if i == ABSENT else self._keys.count(key)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.position(canonical_name(name)) != ABSENT

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._all()))

    def __len__(self) -> int:
        return len(self._keys)

    def items(self) -> list[tuple[str, str]]:
        return list(self._all())

    def select(self, allow: Mapping[str, bool]) -> list[tuple[str, str]]:
        """(name, value) of the lines whose name as received `allow` maps to True, in order. A relay copying
        a few headers strips only those values, without building the whole (name, value) list. `allow` is
        a mapping (a memo whose __missing__ decides new names): a lookup per line, not a call."""
        items = self._items
        if items is not None:
            return [item for item in items if allow[item[0]]]
        lines = zip(self._names, self._raw, strict=True)
        return [(name, raw.strip(" \t")) for name, raw in lines if allow[name]]

    def keyed_items(self) -> list[tuple[str, str, str]]:
        """(canonical key, name as received, value) for every line."""
        return [(k, n, v) for k, (n, v) in zip(self._keys, self._all(), strict=True)]

    def names(self) -> list[str]:
        return [n for n, _ in self._all()] if self._items is not None else list(self._names)

    def copy(self) -> Headers:
        if self._items is None:
            return Headers._lazy(self._names, self._raw, list(self._keys))
        return Headers._trusted(list(self._items), list(self._keys))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._all() == other._all()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._all()!r})"

    # --- changing ------------------------------------------------------------------------------------
    @staticmethod
    def _check(name: str, value: str) -> None:
        if name not in _TOKEN_NAMES:
            if not g.TOKEN_RE.fullmatch(name):
                raise ValueError(f"invalid header name: {name!r}")
            if len(_TOKEN_NAMES) < _TOKEN_NAMES_MAX:
                _TOKEN_NAMES.add(name)
        if "\r" in value or "\n" in value:
            raise ValueError(f"CR/LF in value of header {name}")

    @staticmethod
    def _pretty(name: str) -> str:
        low = name.lower()
        if name != low:
            return name
        return _PRETTY.get(low) or "-".join(part.capitalize() for part in low.split("-"))

    def add(self, name: str, value: str) -> None:
        """Append a line."""
        self.insert(len(self._keys), name, value)

    def insert(self, index: int, name: str, value: str) -> None:
        """Insert a line before position `index` (0 = top, as for Via and Record-Route)."""
        self._check(name, value)
        self._all().insert(index, (self._pretty(name), value))
        self._keys.insert(index, canonical_name(name))
        self._changed()

    def set(self, name: str, value: str) -> None:
        """Replace every line of this name by one line, in place of the first (appended if absent)."""
        self._check(name, value)
        key = canonical_name(name)
        if key not in self._keys:
            self.add(name, value)
            return
        first = self._keys.index(key)
        items = self._all()
        items[first] = (items[first][0], value)
        self._remove_key(key, keep=first)
        self._changed()

    def remove(self, name: str) -> int:
        """Remove every line of this name; returns how many were removed."""
        removed = self._remove_key(canonical_name(name), keep=-1)
        self._changed()
        return removed

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first line of this name (e.g. the top Via of a response)."""
        key = canonical_name(name)
        if key not in self._keys:
            return None
        i = self._keys.index(key)
        del self._keys[i]
        value = self._all().pop(i)[1]
        self._changed()
        return value

    def _changed(self) -> None:
        """After any change to the lines: the typed values and the positions are read again."""
        self._cache.clear()
        self._where = None

    def _remove_key(self, key: str, keep: int) -> int:
        idx = [i for i, k in enumerate(self._keys) if k == key and i != keep]
        items = self._all()
        for i in reversed(idx):
            del items[i], self._keys[i]
        return len(idx)
