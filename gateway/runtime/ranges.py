"""Sets of sample ids kept as sorted, disjoint, inclusive ranges.

A forwarding sink's delivered ids are almost always one prefix plus, while a backlog drains,
one or two ranges above it: a handful of ``[first, last]`` pairs, however many samples they
cover. Every operation is linear in the number of ranges, which stays tiny.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["IdRanges"]


class IdRanges:
    """A set of positive integer ids, as sorted disjoint inclusive ``(first, last)`` ranges."""

    __slots__ = ("_ranges",)

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._ranges: list[tuple[int, int]] = []
        for first, last in ranges:
            self.add(first, last)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(list(self._ranges))

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __repr__(self) -> str:
        return f"IdRanges({self._ranges!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdRanges) and self._ranges == other._ranges

    __hash__ = None  # type: ignore[assignment]  # mutable

    def add(self, first: int, last: int) -> None:
        """Add every id in ``first..last`` (nothing if ``last < first``)."""
        if last < first:
            return
        kept: list[tuple[int, int]] = []
        for a, b in self._ranges:
            if b + 1 < first or a > last + 1:  # neither overlapping nor adjacent
                kept.append((a, b))
            else:
                first, last = min(a, first), max(b, last)
        kept.append((first, last))
        kept.sort()
        self._ranges = kept

    def remove(self, first: int, last: int) -> None:
        """Remove every id in ``first..last``."""
        if last < first:
            return
        kept: list[tuple[int, int]] = []
        for a, b in self._ranges:
            if b < first or a > last:
                kept.append((a, b))
                continue
            if a < first:
                kept.append((a, first - 1))
            if b > last:
                kept.append((last + 1, b))
        self._ranges = kept

    def contains(self, sample_id: int) -> bool:
        return any(a <= sample_id <= b for a, b in self._ranges)

    def count(self, first: int, last: int) -> int:
        """How many ids of ``first..last`` the set holds."""
        return sum(max(0, min(b, last) - max(a, first) + 1) for a, b in self._ranges)

    def prefix_end(self) -> int:
        """The largest ``n`` such that every id in ``1..n`` is in the set (0 if id 1 is not)."""
        if self._ranges and self._ranges[0][0] <= 1:
            return self._ranges[0][1]
        return 0

    def gaps(self, first: int, last: int, *others: IdRanges) -> Iterator[tuple[int, int]]:
        """The ranges of ``first..last`` held neither by this set nor by any of ``others``,
        ascending."""
        covered = sorted(r for s in (self, *others) for r in s._ranges)
        at = first
        for a, b in covered:
            if at > last:
                return
            if b < at:
                continue
            if a > at:
                yield at, min(a - 1, last)
            at = max(at, b + 1)
        if at <= last:
            yield at, last

    def above(self, floor: int) -> list[tuple[int, int]]:
        """The ranges (clipped) of ids above ``floor``."""
        return [(max(a, floor + 1), b) for a, b in self._ranges if b > floor]
