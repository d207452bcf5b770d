"""The binding Breadcrumbs semantics (``shared/breadcrumbs-spec.md``, rules 1-8) as pure functions.

The reference engine, the training mask and the vLLM plugin all import these helpers, so that the
three cannot drift apart: one definition of where beacons go, which position each token takes and
how many KV entries a request holds.

Vocabulary used throughout the project:

* **generated tokens** ``g_1..g_n`` -- what the user sees (beacons excluded).
* **window** -- ``c`` consecutive generated tokens; ``c`` is the ratio in force where the window
  starts. A fixed ratio has one ``c``; a **ratio path** ``((0, c_0), (t_1, c_1), ...)`` makes the
  windows after generated token ``t_k`` ``c_k`` long (rule 8). A **boundary** is a count of
  generated tokens at which a window ends.
* **fed sequence** -- the prompt followed by the generated tokens with a beacon inserted after every
  window that is followed by another fed token (rule 2). A token's *logical index* in the fed
  sequence is its RoPE position (rule 3).
* **physical index** -- where the token's KV entry lives once earlier windows have been evicted:
  ``[prompt | beacons 1..j | current window]``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import NamedTuple

#: A ratio path: ``((0, c_0), (t_1, c_1), ...)``, from generated token ``t_k`` on windows are
#: ``c_k`` long (rule 8). ``()`` is the uncompressed request.
RatioPath = tuple[tuple[int, int], ...]


def validate_ratio(ratio: int | None) -> int | None:
    """Normalise a compression ratio: ``None``/0 mean "no compression"; otherwise an int >= 2.

    Raises ``ValueError`` with a one-line message for anything else (negative, 1, non-integer).
    """
    if ratio is None:
        return None
    if isinstance(ratio, bool) or not isinstance(ratio, int):
        # ValueError, not TypeError: it is a user's bad input, which the CLI prints as one line.
        raise ValueError(f"compression ratio must be an integer >= 2 or none, got {ratio!r}")  # noqa: TRY004
    if ratio == 0:
        return None
    if ratio < 2:
        raise ValueError(f"compression ratio must be an integer >= 2 or none, got {ratio}")
    return ratio


def parse_ratio(text: str) -> int | None:
    """Parse a command-line ratio (``"none"``, ``"8"``); a one-line ``ValueError`` otherwise."""
    if text.strip().lower() in ("none", "null", "off"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError("compression ratio must be an integer >= 2 or 'none', "
                         f"got {text!r}") from None
    if value == 0:
        raise ValueError("compression ratio 0 is not allowed; use 'none' for no compression")
    return validate_ratio(value)


class _Segment(NamedTuple):
    """A stretch of a ratio path in which every window is ``ratio`` generated tokens long.

    Within it the fed sequence repeats ``ratio`` tokens then a beacon, exactly as a fixed ratio
    does from the prompt's end; ``logical`` and ``physical`` play the prompt length's part.
    """

    generated: int  # t_k: generated tokens before the segment's first one
    ratio: int  # c_k
    logical: int  # L_k = P + t_k + beacons before: logical index of generated token t_k + 1
    physical: int  # P_k = P + beacons before: that token's slot


def _check_path(ratio: int | None, switches: RatioPath) -> None:
    """One-line ``ValueError`` unless ``((0, ratio), *switches)`` is a valid ratio path."""
    if ratio is None:
        if switches:
            raise ValueError("an uncompressed request (ratio none) has no ratio to switch")
        return
    if validate_ratio(ratio) is None:
        raise ValueError("compression ratio 0 is not allowed; use None for no compression")
    at, c = 0, ratio
    for next_at, next_c in switches:
        if next_c <= c:
            raise ValueError(f"ratios only rise: the switch to {next_c} at {next_at} follows "
                             f"ratio {c}")
        if next_at <= at or (next_at - at) % c:
            raise ValueError(f"a ratio switch must be at a window boundary: {next_at} is not {at} "
                             f"plus a positive multiple of {c}")
        at, c = next_at, next_c


def _segments(prompt_len: int, path: RatioPath) -> tuple[_Segment, ...]:
    """The segments of a valid path; each starts after all windows of the earlier ones closed."""
    segments: list[_Segment] = []
    beacons = 0
    # Each segment's predecessor; the first one's, (0, 1), closes no window before it.
    for (at, c), previous in zip(path, ((0, 1), *path), strict=False):
        beacons += (at - previous[0]) // previous[1]
        segments.append(_Segment(at, c, prompt_len + at + beacons, prompt_len + beacons))
    return tuple(segments)


@dataclass(frozen=True)
class BeaconSchedule:
    """Where beacons go and where KV entries live for one request (prompt length ``P``, ratio path).

    ``ratio`` is ``c_0``, the ratio the request starts with; ``switches`` are the ``(t_k, c_k)``,
    ``k >= 1``, at which it rises (rule 8): ``t_k`` counts generated tokens (beacons excluded), is a
    boundary of the segment before (``t_k - t_{k-1}`` a positive multiple of ``c_{k-1}``) and
    ``c_k > c_{k-1}``. The beacon that closes the window ending with generated token ``t_k`` still
    compresses ``c_{k-1}`` tokens; the window starting with token ``t_k + 1`` is ``c_k`` long.
    ``ratio=None`` is the uncompressed case: no beacons, physical index == logical index, no
    switches. A fixed ratio is the path of one segment.

    Every method is the fixed-ratio rule applied in the segment the question falls in, with the
    prompt length replaced by the segment's logical start ``L_k`` (or physical start ``P_k``), so it
    costs ``O(log segments)``, never a walk over tokens: the engines ask per request per step.
    """

    prompt_len: int
    ratio: int | None
    switches: RatioPath = ()
    _segments: tuple[_Segment, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        switches = tuple((int(at), int(c)) for at, c in self.switches)
        _check_path(self.ratio, switches)
        object.__setattr__(self, "switches", switches)
        object.__setattr__(self, "_segments", _segments(self.prompt_len, self.path))

    # --- the ratio path ---------------------------------------------------------------------
    @property
    def path(self) -> RatioPath:
        """``((0, ratio), *switches)``; ``()`` for an uncompressed request (it has no windows)."""
        return () if self.ratio is None else ((0, self.ratio), *self.switches)

    def _segment_after(self, num_generated: int) -> _Segment:
        """The segment generated token ``num_generated + 1`` falls in (compressed requests only)."""
        segments = self._segments
        if len(segments) == 1:  # a fixed ratio, asked per request per step: no search
            return segments[0]
        index = bisect_right(segments, num_generated, key=attrgetter("generated"))
        return segments[max(index - 1, 0)]

    def _segment_at(self, logical_index: int) -> _Segment:
        """The segment holding a logical index at or past the prompt (compressed requests only)."""
        segments = self._segments
        if len(segments) == 1:  # a fixed ratio, asked per request per step: no search
            return segments[0]
        index = bisect_right(segments, logical_index, key=attrgetter("logical"))
        return segments[index - 1]

    def ratio_for(self, num_generated: int) -> int | None:
        """The ratio in force after ``num_generated`` generated tokens: the length of the window
        generated token ``num_generated + 1`` falls in (``None`` when uncompressed)."""
        return None if self.ratio is None else self._segment_after(num_generated).ratio

    def next_boundary(self, num_generated: int) -> int:
        """The smallest boundary ``t >= num_generated`` (0 is none: no window ends there).

        It is the end of the window generated token ``max(num_generated, 1)`` falls in. Rising
        there (:meth:`rise`) changes nothing already fed: the old and the new path feed the same
        sequence up to and including the beacon that closes that window.
        """
        if self.ratio is None:
            raise ValueError("an uncompressed request has no windows, so no boundaries")
        token = max(num_generated, 1)
        segment = self._segment_after(token - 1)
        windows = -(-(token - segment.generated) // segment.ratio)
        return segment.generated + windows * segment.ratio

    def rise(self, at: int, ratio: int) -> BeaconSchedule:
        """This schedule with windows ``ratio`` long from boundary ``at`` on.

        ``at`` must be a boundary at or after the last switch point and ``ratio`` above the last
        ratio; rising at the last switch point itself replaces that switch (the path stays
        strictly rising). ``ValueError`` otherwise: ratios never fall, because the entries a
        shorter window would keep are already evicted.
        """
        if self.ratio is None:
            raise ValueError("an uncompressed request has no ratio to raise")
        last_at, last_ratio = self.path[-1]
        if ratio <= last_ratio:
            raise ValueError(f"ratios only rise: {ratio} is not above the current {last_ratio}")
        if at < last_at or self.next_boundary(at) != at:
            raise ValueError(f"a ratio can rise only at a window boundary from {last_at} on; "
                             f"{at} is not one")
        kept = self.switches[:-1] if at == last_at else self.switches
        return replace(self, switches=(*kept, (at, ratio)))

    # --- the fed sequence -------------------------------------------------------------------
    def is_beacon(self, logical_index: int) -> bool:
        """True when the token fed at this logical index (= position) is a beacon."""
        if self.ratio is None or logical_index < self.prompt_len:
            return False
        segment = self._segment_at(logical_index)
        return (logical_index - segment.logical) % (segment.ratio + 1) == segment.ratio

    def next_beacon(self, logical_index: int) -> int:
        """The logical index of the first beacon at or after ``logical_index`` (past the prompt,
        compressed requests only): the end of the window that index is in. The beacon closing a
        segment's last window belongs to that segment, so this never crosses a switch."""
        segment = self._segment_at(logical_index)
        offset = (logical_index - segment.logical) % (segment.ratio + 1)
        return logical_index + segment.ratio - offset

    def num_beacons_fed(self, num_generated_fed: int) -> int:
        """Beacons fed once ``num_generated_fed`` generated tokens have been fed.

        A beacon follows a window only when the token after it is fed too; so after ``m`` fed
        generated tokens there are the beacons before token ``m``'s segment plus
        ``(m - 1 - t_k) // c_k`` (``(m - 1) // c`` for a fixed ratio).
        """
        if self.ratio is None or num_generated_fed <= 0:
            return 0
        segment = self._segment_after(num_generated_fed - 1)
        before = segment.physical - self.prompt_len
        return before + (num_generated_fed - 1 - segment.generated) // segment.ratio

    def logical_len(self, num_generated_fed: int) -> int:
        """Length of the fed sequence (prompt + fed generated tokens + beacons)."""
        return self.prompt_len + num_generated_fed + self.num_beacons_fed(num_generated_fed)

    def insert_beacons(self, generated: Sequence[int],
                       beacon_id: int) -> tuple[list[int], list[bool]]:
        """Rule 6 along the path: the generated tokens with a beacon after every window that has
        a successor, and a parallel list flagging beacons.

        Applied to the tokens a decoder feeds, this is exactly the sequence it feeds (rule 2): it
        reads :meth:`is_beacon` at every logical index, so the two cannot disagree.
        """
        tokens = iter(generated)
        flags = [self.is_beacon(i)
                 for i in range(self.prompt_len, self.logical_len(len(generated)))]
        return [beacon_id if flag else int(next(tokens)) for flag in flags], flags

    # --- the KV cache -----------------------------------------------------------------------
    def physical_index(self, logical_index: int) -> int:
        """Slot of the KV entry of the token fed at ``logical_index`` at the time it is fed.

        A beacon is computed in the slot after its window (``P_k + j + c_k``); after the eviction
        it lives at ``P_k + j`` (:meth:`beacon_home`).
        """
        if self.ratio is None or logical_index < self.prompt_len:
            return logical_index
        segment = self._segment_at(logical_index)
        window, within = divmod(logical_index - segment.logical, segment.ratio + 1)
        return segment.physical + window + within

    def beacon_home(self, logical_index: int) -> int:
        """Slot a beacon's KV entry moves to once its window is evicted."""
        assert self.is_beacon(logical_index)
        segment = self._segment_at(logical_index)
        return segment.physical + (logical_index - segment.logical) // (segment.ratio + 1)

    def kv_len_after_feeding(self, logical_index: int) -> int:
        """KV entries held right after the forward pass of the token at ``logical_index``.

        For a beacon this is the peak just before its window is evicted (rule 5).
        """
        return self.physical_index(logical_index) + 1

    def _window_fill(self, num_generated_fed: int) -> int:
        """Tokens of the current window once ``n >= 1`` generated tokens were fed (1..c_k)."""
        segment = self._segment_after(num_generated_fed - 1)
        return (num_generated_fed - 1 - segment.generated) % segment.ratio + 1

    def kv_entries(self, num_generated_fed: int) -> int:
        """Rule 5: entries held after ``n`` generated tokens were fed (evictions done): the prompt,
        the beacons fed and the tokens of the current window."""
        n = num_generated_fed
        if self.ratio is None:
            return self.prompt_len + n
        if n == 0:
            return self.prompt_len
        return self.prompt_len + self.num_beacons_fed(n) + self._window_fill(n)

    def peak_kv_entries(self, num_generated_fed: int) -> int:
        """Rule 5: the most entries held at any time while feeding ``n`` generated tokens.

        Each beacon's forward holds more than anything before it, because the beacon count and
        the window length never fall; so the peak is now or just after the last beacon's forward.
        """
        n = num_generated_fed
        if self.num_beacons_fed(n) == 0:
            return self.kv_entries(n)
        last_beacon = self.logical_len(n) - 1 - self._window_fill(n)
        return max(self.kv_len_after_feeding(last_beacon), self.kv_entries(n))


def insert_beacons(
    generated: Sequence[int], ratio: int | None, beacon_id: int
) -> tuple[list[int], list[bool]]:
    """Rule 6 at a fixed ratio: :meth:`BeaconSchedule.insert_beacons` of the one-segment path."""
    return BeaconSchedule(0, ratio).insert_beacons(generated, beacon_id)
