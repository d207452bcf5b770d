"""The binding Breadcrumbs semantics (``shared/breadcrumbs-spec.md``, rules 1-6) as pure functions.

The reference engine, the training mask and the vLLM plugin all import these helpers, so that the
three cannot drift apart: one definition of where beacons go, which position each token takes and
how many KV entries a request holds.

Vocabulary used throughout the project:

* **generated tokens** ``g_1..g_n`` -- what the user sees (beacons excluded).
* **fed sequence** -- the prompt followed by the generated tokens with a beacon inserted after every
  ``c``-th generated token that is followed by another fed token (rule 2). A token's *logical index*
  in the fed sequence is its RoPE position (rule 3).
* **physical index** -- where the token's KV entry lives once earlier windows have been evicted:
  ``[prompt | beacons 1..j | current window]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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
    """Parse a ratio from the command line (``"none"``, ``"8"``); one-line ``ValueError`` otherwise."""
    if text.strip().lower() in ("none", "null", "off"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"compression ratio must be an integer >= 2 or 'none', got {text!r}") from None
    if value == 0:
        raise ValueError("compression ratio 0 is not allowed; use 'none' for no compression")
    return validate_ratio(value)


@dataclass(frozen=True)
class BeaconSchedule:
    """Where beacons go and where KV entries live for one request (prompt length ``P``, ratio ``c``).

    ``ratio=None`` is the uncompressed case: no beacons, physical index == logical index.
    """

    prompt_len: int
    ratio: int | None

    # --- the fed sequence -------------------------------------------------------------------
    def is_beacon(self, logical_index: int) -> bool:
        """True when the token fed at this logical index (= position) is a beacon."""
        c = self.ratio
        offset = logical_index - self.prompt_len
        return c is not None and offset >= 0 and offset % (c + 1) == c

    def num_beacons_fed(self, num_generated_fed: int) -> int:
        """Beacons fed once ``num_generated_fed`` generated tokens have been fed.

        A beacon follows generated token ``kc`` only when token ``kc + 1`` is fed too; so after
        ``m`` fed generated tokens there are ``(m - 1) // c`` beacons.
        """
        if self.ratio is None or num_generated_fed <= 0:
            return 0
        return (num_generated_fed - 1) // self.ratio

    def logical_len(self, num_generated_fed: int) -> int:
        """Length of the fed sequence (prompt + fed generated tokens + beacons)."""
        return self.prompt_len + num_generated_fed + self.num_beacons_fed(num_generated_fed)

    # --- the KV cache -----------------------------------------------------------------------
    def physical_index(self, logical_index: int) -> int:
        """Slot of the KV entry of the token fed at ``logical_index`` at the time it is fed.

        A beacon is computed in the slot after its window (``P + j + c``); after the eviction it
        lives at ``P + j`` (:meth:`beacon_home`).
        """
        c = self.ratio
        offset = logical_index - self.prompt_len
        if c is None or offset < 0:
            return logical_index
        window, within = divmod(offset, c + 1)
        return self.prompt_len + window + within

    def beacon_home(self, logical_index: int) -> int:
        """Slot a beacon's KV entry moves to once its window is evicted."""
        assert self.is_beacon(logical_index)
        assert self.ratio is not None
        return self.prompt_len + (logical_index - self.prompt_len) // (self.ratio + 1)

    def kv_len_after_feeding(self, logical_index: int) -> int:
        """KV entries held right after the forward pass of the token at ``logical_index``.

        For a beacon this is the peak just before its window is evicted (rule 5).
        """
        return self.physical_index(logical_index) + 1

    def kv_entries(self, num_generated_fed: int) -> int:
        """Rule 5: entries held after ``n`` generated tokens were fed (evictions done)."""
        n = num_generated_fed
        if self.ratio is None:
            return self.prompt_len + n
        if n == 0:
            return self.prompt_len
        beacons = self.num_beacons_fed(n)
        return self.prompt_len + beacons + (n - beacons * self.ratio)

    def peak_kv_entries(self, num_generated_fed: int) -> int:
        """Rule 5: the most entries held at any time while feeding ``n`` generated tokens."""
        n = num_generated_fed
        if self.ratio is None or n <= self.ratio:
            return self.kv_entries(n)
        beacons = self.num_beacons_fed(n)
        # Just after the last beacon's forward: prompt + earlier beacons + full window + beacon.
        return max(self.prompt_len + beacons + self.ratio, self.kv_entries(n))


def insert_beacons(
    generated: Sequence[int], ratio: int | None, beacon_id: int
) -> tuple[list[int], list[bool]]:
    """Rule 6: the generated tokens with a beacon after every ``c``-th token that has a successor.

    Returns the new token list and a parallel list flagging beacons. Applied to the tokens a
    decoder feeds, this is exactly the sequence the decoder feeds (rule 2).
    """
    tokens: list[int] = []
    flags: list[bool] = []
    for i, token in enumerate(generated):
        if ratio is not None and i > 0 and i % ratio == 0:
            tokens.append(beacon_id)
            flags.append(True)
        tokens.append(int(token))
        flags.append(False)
    return tokens, flags
