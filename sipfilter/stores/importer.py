"""Read a list file (one number per line, CSV with a named column, Bloctel export) into a NumberSet.

Normalises exactly like the call path (the config's Normaliser) and reports bad lines by number; never writes
the store and never decides whether to switch (the caller compares `bad_share` with its limit).
"""

from __future__ import annotations

import csv
import hashlib
import io
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyroaring import BitMap64, FrozenBitMap64

from sipfilter.policy.numbers import Normaliser
from sipfilter.stores.numberset import NumberSet, number_key

FORMATS = ("auto", "lines", "csv", "bloctel")
# Header names recognised as "the number column" when --column is not given.
NUMBER_COLUMNS = ("number", "numero", "numéro", "telephone", "téléphone", "phone", "msisdn", "e164", "tel")
MAX_BAD_KEPT = 100  # bad lines kept with their text for the report; all are counted
_PROGRESS_EVERY = 1 << 18  # lines

Progress = Callable[[int, int], None]  # (bytes read, total bytes)


class ListFileError(Exception):
    """The file cannot be read as a list at all (missing column, unreadable file, unknown format)."""


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    text: str
    reason: str


@dataclass(frozen=True, slots=True)
class SourceInfo:
    name: str  # file name (no directory)
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ImportResult:
    numbers: NumberSet
    source: SourceInfo
    format: str
    lines: int  # data lines read (header, blanks and comments excluded)
    bad: int
    bad_lines: tuple[BadLine, ...]  # the first MAX_BAD_KEPT
    duplicates: int

    @property
    def bad_share(self) -> float:
        return self.bad / self.lines if self.lines else 0.0


def file_source(path: Path) -> SourceInfo:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return SourceInfo(path.name, size, h.hexdigest())


class _FastFrench:
    """10-digit French national numbers ("0612345678") without a per-number Normaliser call.

    The E.164 country code of a national number depends only on its first digits (the overseas table); we ask
    the Normaliser once per 4-digit NSN prefix, so results are identical to the call path by construction."""

    def __init__(self, normaliser: Normaliser):
        self.base: dict[bytes, int] | None = None
        if normaliser.country_code != "+33" or max(getattr(normaliser, "_overseas_lengths", [9]) or [0]) > 4:
            return  # not the table shape this shortcut relies on: use the Normaliser for every line
        base: dict[bytes, int] = {}
        for p in range(1000, 10000):
            rep = normaliser.number(f"0{p}00000", "FR")
            if rep.kind != "e164" or not rep.e164.endswith(f"{p}00000"):
                return
            code = int(rep.e164[1:-9])
            base[str(p).encode()] = code * 10**9
        self.base = base

    def key(self, field: bytes) -> int | None:
        if self.base is not None and len(field) == 10 and field[:1] == b"0" and field.isdigit():
            b = self.base.get(field[1:5])
            if b is not None:
                return b + int(field[1:])
        return None


def detect_format(head: bytes) -> str:
    """Guess the layout from the first lines of a file."""
    lines = [ln.strip() for ln in head.splitlines() if ln.strip() and not ln.startswith(b"#")][:3]
    if not lines:
        return "lines"
    first = lines[0]
    first_field = first.split(b";")[0].split(b",")[0].strip().lstrip(b"+")
    header = not first_field.replace(b" ", b"").replace(b".", b"").isdigit()
    if b";" in first and header:
        return "bloctel"
    if header and len(lines) > 1:
        return "csv"  # a header line, then numbers: CSV (possibly single-column)
    return "lines"


def read_list(
    path: str | Path,
    normaliser: Normaliser,
    *,
    fmt: str = "auto",
    column: str | None = None,
    region: str = "FR",
    progress: Progress | None = None,
) -> ImportResult:
    path = Path(path)
    if fmt not in FORMATS:
        raise ListFileError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    try:
        source = file_source(path)
        total = source.size
        with open(path, "rb") as f:
            if fmt == "auto":
                fmt = detect_format(f.read(65536))
                f.seek(0)
            if column is not None and fmt == "lines":
                fmt = "csv"
            reader = _Reader(normaliser, region, progress, total)
            if fmt == "csv":
                reader.read_csv(f, column)
            else:
                reader.read_delimited(f, fmt == "bloctel", column)
    except OSError as exc:
        raise ListFileError(f"{path}: {exc.strerror or exc}") from exc
    bits = BitMap64(reader.keys)
    bits.run_optimize()
    bits.shrink_to_fit()
    numbers = NumberSet(FrozenBitMap64(bits))
    good = reader.lines - reader.bad
    return ImportResult(numbers, source, fmt, reader.lines, reader.bad, tuple(reader.bad_lines),
                        good - len(numbers))


class _Reader:
    def __init__(self, normaliser: Normaliser, region: str, progress: Progress | None, total: int):
        self.normaliser = normaliser
        self.region = region
        self.progress = progress
        self.total = total
        self.fast = _FastFrench(normaliser) if region == "FR" else None
        self.keys = array("Q")
        self.lines = 0
        self.bad = 0
        self.bad_lines: list[BadLine] = []

    def _slow(self, lineno: int, text: str) -> None:
        n = self.normaliser.number(text, self.region)
        key = number_key(n.e164) if n.ok else None
        if key is None:
            self._bad(lineno, text, n.error or "not a telephone number")
        else:
            self.keys.append(key)

    def _bad(self, lineno: int, text: str, reason: str) -> None:
        self.bad += 1
        if len(self.bad_lines) < MAX_BAD_KEPT:
            self.bad_lines.append(BadLine(lineno, text[:200], reason))

    def read_delimited(self, f: io.BufferedReader, header: bool, column: str | None) -> None:
        """`lines` (one number per line) and `bloctel` (';'-separated, header line, number in column 1)."""
        index = 0
        keys_append = self.keys.append
        fast_key = self.fast.key if self.fast is not None else (lambda _f: None)
        progress, every = self.progress, _PROGRESS_EVERY
        lineno = 0
        for lineno, raw in enumerate(f, 1):
            if header:
                header = False
                if column is not None:
                    names = [c.strip().decode("utf-8", "replace").lower() for c in raw.split(b";")]
                    if column.lower() not in names:
                        raise ListFileError(f"no column {column!r} in the header line {names}")
                    index = names.index(column.lower())
                continue
            field = raw.split(b";")[index].strip() if index else raw.split(b";", 1)[0].strip()
            key = fast_key(field)
            if key is not None:
                self.lines += 1
                keys_append(key)
            elif field and not field.startswith(b"#"):
                self.lines += 1
                self._slow(lineno, field.decode("utf-8", "replace"))
            if progress is not None and lineno % every == 0:
                progress(f.tell(), self.total)
        if progress is not None:
            progress(self.total, self.total)

    def read_csv(self, f: io.BufferedReader, column: str | None) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="replace", newline="")
        head = text.readline()
        delimiter = ";" if head.count(";") > head.count(",") else ","
        names = [c.strip().lower() for c in next(csv.reader([head], delimiter=delimiter))]
        if column is not None:
            if column.lower() not in names:
                raise ListFileError(f"no column {column!r} in the CSV header {names}")
            index = names.index(column.lower())
        else:
            found = [i for i, n in enumerate(names) if n in NUMBER_COLUMNS]
            if not found:
                raise ListFileError(f"no number column in the CSV header {names}: name one with --column")
            index = found[0]
        fast_key = self.fast.key if self.fast is not None else (lambda _f: None)
        for lineno, row in enumerate(csv.reader(text, delimiter=delimiter), 2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            self.lines += 1
            if index >= len(row):
                self._bad(lineno, delimiter.join(row), f"no column {names[index]!r} on this line")
                continue
            field = row[index].strip()
            key = fast_key(field.encode())
            if key is not None:
                self.keys.append(key)
            else:
                self._slow(lineno, field)
            if self.progress is not None and lineno % _PROGRESS_EVERY == 0:
                self.progress(min(f.tell(), self.total), self.total)
        if self.progress is not None:
            self.progress(self.total, self.total)
        text.detach()


def bad_share_exceeded(result: ImportResult, max_share: float) -> bool:
    return result.bad_share > max_share
