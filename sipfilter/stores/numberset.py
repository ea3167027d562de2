"""Compact immutable set of phone numbers (E.164 or short codes) as a 64-bit Roaring bitmap.

Chosen by measurement (bench/lists.py, figures in docs/performance.md): several times smaller and faster to
look up than a sorted numpy array. Pure data structure: no files, no normalisation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pyroaring import BitMap64, FrozenBitMap64

# E.164 "+CC…" (≤ 15 digits, no leading zero) maps to its digits as an integer (< 2**50). Anything else made
# of ASCII digits (short codes such as "3900", which may start with 0) gets a tag bit, its length and value.
_SHORT_TAG = 1 << 62
_LEN_SHIFT = 52
_VALUE_MASK = (1 << _LEN_SHIFT) - 1


def number_key(number: str) -> int | None:
    """The integer key of `number`, or None when it is neither E.164 nor a digit string of ≤ 15 digits."""
    if not number or not number.isascii():
        return None
    if number[0] == "+":
        digits = number[1:]
        if 1 <= len(digits) <= 15 and digits.isdigit() and digits[0] != "0":
            return int(digits)
        return None
    if len(number) <= 15 and number.isdigit():
        return _SHORT_TAG | (len(number) << _LEN_SHIFT) | int(number)
    return None


def key_number(key: int) -> str:
    """Inverse of number_key."""
    if key & _SHORT_TAG:
        length = (key >> _LEN_SHIFT) & 0x3FF
        return str(key & _VALUE_MASK).zfill(length)
    return "+" + str(key)


class NumberSet:
    """An immutable set of numbers; `number in s` takes an E.164 string and never raises."""

    __slots__ = ("_bits",)

    def __init__(self, bits: FrozenBitMap64 | None = None):
        self._bits = bits if bits is not None else FrozenBitMap64()

    @classmethod
    def from_numbers(cls, numbers: Iterable[str]) -> NumberSet:
        keys = []
        for n in numbers:
            k = number_key(n)
            if k is None:
                raise ValueError(f"not an E.164 number or digit string: {n!r}")
            keys.append(k)
        return cls.from_keys(keys)

    @classmethod
    def from_keys(cls, keys: Iterable[int]) -> NumberSet:
        bits = BitMap64()
        bits.update(keys)
        bits.run_optimize()
        bits.shrink_to_fit()
        return cls(FrozenBitMap64(bits))

    @classmethod
    def deserialize(cls, data: bytes) -> NumberSet:
        return cls(FrozenBitMap64.deserialize(data))

    def serialize(self) -> bytes:
        return bytes(self._bits.serialize())

    def __contains__(self, number: object) -> bool:
        # Hot path: int("+336…") parses the common case in one C call; number_key handles the rest.
        if type(number) is not str:
            return False
        digits = number[1:]
        if number[:1] == "+" and digits[:1] != "0" and len(digits) <= 15 and digits.isdigit() \
                and digits.isascii():
            return int(digits) in self._bits
        key = number_key(number)
        return key is not None and key in self._bits

    def __len__(self) -> int:
        return len(self._bits)

    def __iter__(self) -> Iterator[str]:
        for key in self._bits:
            yield key_number(key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NumberSet) and self._bits == other._bits

    __hash__ = None  # type: ignore[assignment]

    def union(self, other: NumberSet) -> NumberSet:
        return NumberSet(FrozenBitMap64(self._bits | other._bits))

    def difference(self, other: NumberSet) -> NumberSet:
        return NumberSet(FrozenBitMap64(self._bits - other._bits))
