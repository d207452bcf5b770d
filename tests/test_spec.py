"""The closed forms of ``BeaconSchedule`` equal a literal simulation of rules 2, 5 and 8."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ratio_paths import ratio_and_switches, ratio_paths

from breadcrumbs_vllm.spec import BeaconSchedule, RatioPath, insert_beacons


def schedule_of(prompt_len: int, path: RatioPath) -> BeaconSchedule:
    return BeaconSchedule(prompt_len, *ratio_and_switches(path))


def ratio_in_force(path: RatioPath, num_generated: int) -> int | None:
    """Rule 8 read literally: the ratio of the last switch at or before the count."""
    return max((c for at, c in path if at <= num_generated), default=None)


@dataclass
class Simulation:
    """Feeding ``n`` generated tokens with a cache of labelled entries, evicting for real."""

    #: Per logical index past the prompt: (is beacon, slot it is computed in, KV length after
    #: its forward, slot it moves to after its window's eviction or None).
    fed: list[tuple[bool, int, int, int | None]] = field(default_factory=list)
    held: list[int] = field(default_factory=list)  # entries after m generated tokens fed
    peak: list[int] = field(default_factory=list)  # most entries at any time until then
    beacons: list[int] = field(default_factory=list)  # beacons fed until then
    boundaries: list[int] = field(default_factory=list)  # counts at which a window filled


def simulate(prompt_len: int, path: RatioPath, n: int) -> Simulation:
    sim = Simulation(held=[prompt_len], peak=[prompt_len], beacons=[0])
    cache: list[tuple[str, int]] = [("prompt", i) for i in range(prompt_len)]
    window: list[tuple[str, int]] = []
    length = None  # the current window's length, fixed when it starts
    top = prompt_len  # the most entries held so far
    for g in range(1, n + 1):
        if window and len(window) == length:  # rule 2: the beacon goes in before token g
            beacon = ("beacon", sim.beacons[-1] + 1)
            cache.append(beacon)
            after = len(cache)
            cache = [e for e in cache if e not in window]
            sim.fed.append((True, after - 1, after, cache.index(beacon)))
            top = max(top, after)
            window = []
        if not window:
            length = ratio_in_force(path, g - 1)
        cache.append(("token", g))
        window.append(("token", g))
        sim.fed.append((False, len(cache) - 1, len(cache), None))
        sim.held.append(len(cache))
        top = max(top, len(cache))
        sim.peak.append(top)
        sim.beacons.append(sum(kind == "beacon" for kind, _ in cache))
        if len(window) == length:
            sim.boundaries.append(g)
    return sim


PROMPTS = st.integers(0, 9)
PATHS = st.one_of(st.just(()), ratio_paths())


@settings(max_examples=300)
@given(prompt_len=PROMPTS, path=PATHS, n=st.integers(0, 80))
def test_fed_sequence_and_slots_equal_the_simulation(prompt_len, path, n):
    schedule, sim = schedule_of(prompt_len, path), simulate(prompt_len, path, n)
    assert schedule.logical_len(n) == prompt_len + len(sim.fed)
    for i in range(prompt_len):
        assert (schedule.is_beacon(i), schedule.physical_index(i)) == (False, i)
    for i, (beacon, slot, after, home) in enumerate(sim.fed, start=prompt_len):
        assert schedule.is_beacon(i) == beacon
        assert schedule.physical_index(i) == slot
        assert schedule.kv_len_after_feeding(i) == after
        if beacon:
            assert schedule.beacon_home(i) == home
    beacons = [i for i, (beacon, *_) in enumerate(sim.fed, start=prompt_len) if beacon]
    for i in range(prompt_len, beacons[-1] + 1 if beacons else prompt_len):
        assert schedule.next_beacon(i) == min(b for b in beacons if b >= i)
    tokens = iter(range(100, 100 + n))
    expected = [-1 if beacon else next(tokens) for beacon, *_ in sim.fed]
    assert schedule.insert_beacons(range(100, 100 + n), -1) == (
        expected, [beacon for beacon, *_ in sim.fed])


@settings(max_examples=300)
@given(prompt_len=PROMPTS, path=PATHS, n=st.integers(0, 80))
def test_kv_counts_equal_the_simulation(prompt_len, path, n):
    schedule, sim = schedule_of(prompt_len, path), simulate(prompt_len, path, n)
    for m in range(n + 1):
        assert schedule.num_beacons_fed(m) == sim.beacons[m]
        assert schedule.logical_len(m) == prompt_len + m + sim.beacons[m]
        assert schedule.kv_entries(m) == sim.held[m]
        assert schedule.peak_kv_entries(m) == sim.peak[m]


@settings(max_examples=300)
@given(prompt_len=PROMPTS, path=ratio_paths(), n=st.integers(0, 60))
def test_ratio_for_and_next_boundary_equal_the_simulation(prompt_len, path, n):
    schedule = schedule_of(prompt_len, path)
    horizon = n + 2 * max(c for _, c in path)  # far enough to close the window n falls in
    boundaries = simulate(prompt_len, path, horizon).boundaries
    assert schedule.path == path
    for m in range(n + 1):
        assert schedule.ratio_for(m) == ratio_in_force(path, m)
        assert schedule.next_boundary(m) == min(b for b in boundaries if b >= m)


@settings(max_examples=300)
@given(prompt_len=PROMPTS, path=ratio_paths(max_switches=2), past=st.integers(0, 30),
       step=st.integers(1, 5))
def test_rising_at_the_next_boundary_changes_nothing_fed(prompt_len, path, past, step):
    """What callers do, ``n`` tokens into the last segment: rise at ``next_boundary(n)``. Both
    paths feed the same sequence, into the same slots, up to the beacon closing that window;
    then windows are the new ratio long."""
    schedule, n = schedule_of(prompt_len, path), path[-1][0] + past
    at, ratio = schedule.next_boundary(n), path[-1][1] + step
    risen = schedule.rise(at, ratio)
    assert risen.path == tuple(p for p in path if p[0] != at) + ((at, ratio),)
    assert risen.ratio_for(at) == ratio and risen.ratio_for(at - 1) == schedule.ratio_for(at - 1)
    for i in range(schedule.logical_len(at + 1) - 1):  # everything before token at + 1
        assert risen.is_beacon(i) == schedule.is_beacon(i)
        assert risen.physical_index(i) == schedule.physical_index(i)
    assert risen.next_boundary(at + 1) == at + ratio


def test_a_fixed_ratio_is_the_one_segment_path():
    schedule = BeaconSchedule(5, 4)
    assert schedule.path == ((0, 4),) and schedule.switches == ()
    assert schedule.ratio_for(0) == schedule.ratio_for(1000) == 4
    assert schedule.next_boundary(0) == schedule.next_boundary(4) == 4
    assert schedule.next_boundary(5) == 8
    assert insert_beacons([7] * 9, 4, 1) == schedule.insert_beacons([7] * 9, 1)
    assert BeaconSchedule(5, None).path == () and BeaconSchedule(5, None).ratio_for(3) is None
    assert BeaconSchedule(5, 4, [[8, 16]]) == BeaconSchedule(5, 4, ((8, 16),))


def test_a_path_by_hand():
    """P=2, c=2 then 3 from generated token 4: g1 g2 b1 g3 g4 b2 | g5 g6 g7 b3 g8."""
    schedule = BeaconSchedule(2, 2, ((4, 3),))
    assert [schedule.is_beacon(i) for i in range(2, 13)] == [
        False, False, True, False, False, True, False, False, False, True, False]
    # Slots when computed: beacons in the slot after their window, then moved home.
    assert [schedule.physical_index(i) for i in range(2, 13)] == [2, 3, 4, 3, 4, 5, 4, 5, 6, 7, 5]
    assert [schedule.beacon_home(i) for i in (4, 7, 11)] == [2, 3, 4]
    assert [schedule.kv_entries(n) for n in range(9)] == [2, 3, 4, 4, 5, 5, 6, 7, 6]
    assert schedule.peak_kv_entries(8) == 8  # b3's forward: prompt, b1, b2, g5..g7, b3


def test_the_ratio_at_the_last_switch_can_rise_again():
    schedule = BeaconSchedule(0, 2, ((4, 3),)).rise(4, 8)
    assert schedule.path == ((0, 2), (4, 8))


@pytest.mark.parametrize(("ratio", "switches", "message"), [
    (None, ((4, 8),), "uncompressed"),
    (0, (), "ratio 0"),
    (1, (), "ratio"),
    (4, ((8, 4),), "only rise"),
    (4, ((8, 2),), "only rise"),
    (4, ((6, 8),), "window boundary"),
    (4, ((0, 8),), "window boundary"),
    (4, ((8, 8), (4, 16)), "window boundary"),
])
def test_bad_paths_fail_in_one_line(ratio, switches, message):
    with pytest.raises(ValueError, match=message) as info:
        BeaconSchedule(3, ratio, switches)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("at", "ratio", "message"), [
    (8, 4, "only rise"), (8, 8, "window boundary"), (0, 8, "window boundary"),
    (4, 16, "window boundary"),  # before the last switch point
])
def test_bad_rises_fail_in_one_line(at, ratio, message):
    with pytest.raises(ValueError, match=message):
        BeaconSchedule(3, 2, ((6, 4),)).rise(at, ratio)
    with pytest.raises(ValueError, match="uncompressed"):
        BeaconSchedule(3, None).rise(4, 8)
    with pytest.raises(ValueError, match="no windows"):
        BeaconSchedule(3, None).next_boundary(4)
