"""List file parsing: formats, normalisation identical to the call path, bad lines, the number set."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipfilter.configure import load_config
from sipfilter.policy.numbers import Normaliser
from sipfilter.policy.rulepack import normaliser_for
from sipfilter.stores.importer import ListFileError, detect_format, file_source, read_list
from sipfilter.stores.numberset import NumberSet, key_number, number_key

ROOT = Path(__file__).resolve().parents[2]
NORM = Normaliser()  # the French plan from phonenumbers (0692… is Réunion's +262 692…)


def write(tmp_path: Path, text: str, name: str = "list.txt") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode())
    return p


def test_lines_format_with_forms_blanks_comments_and_bad_lines(tmp_path: Path) -> None:
    p = write(tmp_path, "# opt-outs\n0612345678\n+33 6 12 34 56 79\n\n0033612345680\nnot-a-number\n0612\n"
                        "06 12 34 56 78\n")
    r = read_list(p, NORM)
    assert r.format == "lines"
    assert sorted(r.numbers) == ["+33612345678", "+33612345679", "+33612345680"]
    assert (r.lines, r.bad, r.duplicates) == (6, 2, 1)
    assert [(b.line, b.text) for b in r.bad_lines] == [(6, "not-a-number"), (7, "0612")]
    assert r.bad_share == pytest.approx(2 / 6)


def test_bloctel_layout(tmp_path: Path) -> None:
    p = write(tmp_path, "NUMERO;DATE_INSCRIPTION\r\n0612345678;2026-01-01\r\n0692123456;2026-01-02\r\n")
    r = read_list(p, NORM)
    assert r.format == "bloctel"
    assert sorted(r.numbers) == ["+262692123456", "+33612345678"]
    assert r.bad == 0 and r.lines == 2


def test_csv_with_named_column_and_missing_cells(tmp_path: Path) -> None:
    p = write(tmp_path, 'id,name,phone\n1,"Dupont, Jean",06 12 34 56 78\n2,Martin\n3,X,+447911123456\n')
    r = read_list(p, NORM, fmt="csv", column="phone")
    assert sorted(r.numbers) == ["+33612345678", "+447911123456"]
    assert [b.line for b in r.bad_lines] == [3]
    r = read_list(p, NORM)  # auto: header then rows → csv, "phone" recognised
    assert r.format == "csv" and len(r.numbers) == 2
    with pytest.raises(ListFileError, match="no column"):
        read_list(p, NORM, fmt="csv", column="msisdn")


def test_source_info_and_missing_file(tmp_path: Path) -> None:
    p = write(tmp_path, "0612345678\n", "dnc.txt")
    r = read_list(p, NORM)
    assert r.source == file_source(p)
    assert (r.source.name, r.source.size) == ("dnc.txt", 11)
    assert r.source.sha256 == hashlib.sha256(b"0612345678\n").hexdigest()
    with pytest.raises(ListFileError):
        read_list(tmp_path / "missing.txt", NORM)


def test_detect_format() -> None:
    assert detect_format(b"0612345678\n0612345679\n") == "lines"
    assert detect_format(b"+33612345678\n") == "lines"
    assert detect_format(b"NUMERO;DATE\n0612345678;x\n") == "bloctel"
    assert detect_format(b"number\n0612345678\n") == "csv"


def test_fast_path_matches_the_call_path_normaliser_of_the_real_rule_pack(tmp_path: Path) -> None:
    """Every 4-digit national prefix, through the file fast path and through the Normaliser: same E.164."""
    norm = normaliser_for(load_config(ROOT / "config" / "sipfilter.yaml"))
    rng = random.Random(4)
    national = [f"0{p}{rng.randrange(100000):05d}" for p in range(1000, 10000)]
    r = read_list(write(tmp_path, "\n".join(national) + "\n"), norm, fmt="lines")
    expected = {n.e164 for n in (norm.number(x, "FR") for x in national) if n.ok}
    assert set(r.numbers) == expected
    assert any(not e.startswith("+33") for e in expected)  # the overseas table really was exercised


def test_progress_is_reported(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    p = write(tmp_path, "0612345678\n" * 10)
    read_list(p, NORM, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (110, 110)


@given(st.lists(st.one_of(
    st.integers(1, 10**15 - 1).map(lambda v: f"+{v}").filter(lambda s: len(s) <= 16),
    st.text("0123456789", min_size=1, max_size=15))))
def test_number_keys_round_trip_and_never_collide(numbers: list[str]) -> None:
    keys = {}
    for n in numbers:
        k = number_key(n)
        assert k is not None and key_number(k) == n
        assert keys.setdefault(k, n) == n
    s = NumberSet.from_numbers(numbers)
    assert sorted(s) == sorted(set(numbers))
    assert all(n in s for n in numbers)


def test_number_set_rejects_non_numbers() -> None:
    s = NumberSet.from_numbers(["+33612345678", "3900"])
    for probe in ["", "+", "+0612345678", "33612345678", "+33612345678 ", "+٣٣", None, 33612345678]:
        assert probe not in s
    assert "3900" in s and "+33612345678" in s
    assert number_key("+1234567890123456") is None  # 16 digits: not E.164
    with pytest.raises(ValueError):
        NumberSet.from_numbers(["hello"])
    assert NumberSet.deserialize(s.serialize()) == s
    t = NumberSet.from_numbers(["+33612345678", "+33700000000"])
    assert sorted(s.union(t)) == ["+33612345678", "+33700000000", "3900"]
    assert sorted(s.difference(t)) == ["3900"]
