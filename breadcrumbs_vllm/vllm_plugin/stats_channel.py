"""The channel that carries the scheduler's figures to the front end's stat logger, beside vLLM's.

vLLM ships ``SchedulerStats`` from the EngineCore process to the front end after every step, but
it has no free-form field (a subclass or an extra attribute is dropped by its msgpack decoding),
so the plugin leaves it exactly as stock makes it and keeps its own figures in one small file per
engine under ``/dev/shm`` (shared memory), mapped by both processes:

* **Writer**: the engine's ``BreadcrumbsScheduler`` (EngineCore process, or the front end's own
  for an in-process engine) creates the file in its ``__init__`` when stats are on, and rewrites
  it whenever it publishes: *cumulative* counts per supported ratio (beacons, evicted entries,
  freed blocks), which lose nothing when the reader skips steps, and *current* gauges (blocks
  held and what they would be uncompressed, per ratio; projected KV usage). A seqlock (``seq``
  odd while writing) lets the reader detect a torn copy and retry.
* **Reader**: that engine's ``BreadcrumbsStatLogger`` in a front-end process maps the file on its
  first ``record()`` and reads it on every later one.

Naming. Both sides must find the same file with nothing but what each has: the vLLM config and
the data-parallel engine index. The file is
``breadcrumbs-<anchor>-<writer pid>-<engine>-<instance>`` where ``anchor`` is the writer's parent
pid and ``instance`` the config's ``instance_id`` (less the ``_dp<rank>`` suffix vLLM adds to each
DP engine's copy). That config is the front end's own (pickled into the EngineCore process), so a
front end looks for its own ``instance_id`` under ``anchor`` = its pid (EngineCore is its child:
``AsyncLLM``, the gateway, ``vllm serve`` with one API server, data parallelism behind one front
end) or its parent's pid (an in-process engine). ``vllm serve --data-parallel-size N`` starts N API
servers that build their own configs (another ``instance_id``) beside the engines, all children of
the ``vllm serve`` process; for them the reader falls back to the one file of its engine index under
its parent's pid.

Lifetime. The first reader to map a file *claims* it by unlinking its name: the name is gone
while both mappings stay valid, so exactly one front end exports an engine's figures (with N
API servers, one claims each engine; counting it twice would double the counters Prometheus sums
across them), and nothing is left in ``/dev/shm`` whatever becomes of either process afterwards.
A name nobody claimed (stats on, but no plugin logger: e.g. an offline ``vllm.LLM``) is unlinked
by the writer's :meth:`StatsWriter.close` (the scheduler's ``shutdown``, or the interpreter's exit
for an in-process engine). After a crash before any claim the file stays; the next writer on the
machine removes every ``breadcrumbs-*`` file whose writer pid is no longer alive. A reader
whose engine restarted keeps reading the old mapping (vLLM does not restart engine cores).
Engines on another node (``--headless``) share no ``/dev/shm``: their figures are not exported.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DIRECTORY = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
PREFIX = "breadcrumbs"
MAGIC = b"BCS2"
#: magic, number of ratios, seq (odd while writing), projected shown (0/1), projected usage,
#: preemptions while a request could still rise, preemptions while none could, and steps a
#: request waited for a block instead of a preemption (cumulative).
HEADER = struct.Struct("<4sIQQdQQQ")
#: Per ratio: ratio, beacons, evicted, freed (cumulative); held, uncompressed, shown (gauges).
RATIO = struct.Struct("<7q")
COUNTS = ("beacons", "evicted", "freed")
#: After the ratio records: escalations from each of (none, ratio 1..n) to each ratio 1..n,
#: cumulative, row by row (``ESCALATION`` per cell).
ESCALATION = struct.Struct("<q")


@dataclass(frozen=True)
class RatioFigures:
    """One ratio's figures: ``counts`` cumulative since the engine started, the rest now.

    ``shown`` says holdings were published for this ratio at least once: its held/saved
    gauges exist from then on (dropping to 0 when no request at that ratio is left).
    """

    counts: dict[str, int]
    held: int
    uncompressed: int
    shown: bool


@dataclass(frozen=True)
class Snapshot:
    """The figures of one engine at one instant; ``projected`` is ``None`` until first set."""

    projected: float | None
    ratios: dict[int, RatioFigures]
    #: ``{(from, to): count}``, cumulative; ``from`` is ``None`` for an uncompressed start.
    escalations: dict[tuple[int | None, int], int]
    #: Preemptions, cumulative: ``{"yes": while a request could still rise, "no": while
    #: none could}``.
    preemptions: dict[str, int]
    #: Steps in which a running request waited for a free block instead of a preemption,
    #: cumulative.
    waits: int


def _instance(vllm_config: Any, engine: int) -> str:
    instance = str(getattr(vllm_config, "instance_id", "") or "")
    instance = instance.removesuffix(f"_dp{engine}")
    return re.sub(r"[^A-Za-z0-9_.]", "_", instance)


def _name(anchor: int, writer: int | str, engine: int, instance: str) -> str:
    return f"{PREFIX}-{anchor}-{writer}-{engine}-{instance}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _unlink_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)


def remove_stale(directory: Path = DIRECTORY) -> list[Path]:
    """Remove the files of writers that died before a reader claimed them (crashes)."""
    removed = []
    for path in directory.glob(f"{PREFIX}-*-*-*-*"):
        writer = path.name.split("-")[2]
        if writer.isdigit() and not _alive(int(writer)):
            _unlink_quietly(path)
            removed.append(path)
    return removed


class StatsWriter:
    """The scheduler's side: one per engine, for the engine's life (see the module docstring)."""

    def __init__(self, vllm_config: Any, ratios: list[int], directory: Path = DIRECTORY) -> None:
        engine = int(getattr(vllm_config.parallel_config, "data_parallel_index", 0) or 0)
        remove_stale(directory)
        self.path = directory / _name(os.getppid(), os.getpid(), engine,
                                      _instance(vllm_config, engine))
        self.ratios = list(ratios)
        size = (HEADER.size + RATIO.size * len(self.ratios)
                + ESCALATION.size * (len(self.ratios) + 1) * len(self.ratios))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._seq = 0
        self._unlink = weakref.finalize(self, _unlink_quietly, self.path)
        self._write(None, {})

    def publish(self, totals: dict[str, Any], holdings: dict[int, tuple[int, int]] | None,
                projected: float) -> None:
        """Write the cumulative ``totals`` (``{"beacons": {ratio: n}, ..., "escalations":
        {(from, to): n}, "preemptions": {"yes": n, "no": n}, "waits": {"block": n}}``), the
        projected usage and, unless ``None`` (nothing compressed since they last dropped to 0),
        the holdings ``{ratio: (held, uncompressed)}``."""
        self._write(projected, totals, holdings)

    def _header(self, projected: float | None, totals: dict[str, Any]) -> None:
        preempted = totals.get("preemptions", {})
        HEADER.pack_into(self._map, 0, MAGIC, len(self.ratios), self._seq,
                         projected is not None, projected or 0.0, preempted.get("yes", 0),
                         preempted.get("no", 0), totals.get("waits", {}).get("block", 0))

    def _write(self, projected: float | None, totals: dict[str, Any],
               holdings: dict[int, tuple[int, int]] | None = None) -> None:
        buf = self._map
        old = self._ratio_records() if self._seq else {}
        self._seq += 1  # odd: a reader that sees it retries
        self._header(projected, totals)
        for i, ratio in enumerate(self.ratios):
            held, uncompressed, shown = old.get(ratio, (0, 0, 0))
            if holdings is not None:
                held, uncompressed = holdings.get(ratio, (0, 0))
                shown = shown or ratio in holdings
            counts = [totals.get(name, {}).get(ratio, 0) for name in COUNTS]
            RATIO.pack_into(buf, HEADER.size + i * RATIO.size, ratio, *counts, held,
                            uncompressed, shown)
        escalations = totals.get("escalations", {})
        for cell, pair in enumerate(_pairs(self.ratios)):
            ESCALATION.pack_into(buf, _escalation_offset(len(self.ratios), cell),
                                 escalations.get(pair, 0))
        self._seq += 1
        self._header(projected, totals)

    def _ratio_records(self) -> dict[int, tuple[int, int, int]]:
        out = {}
        for i in range(len(self.ratios)):
            ratio, *_, held, uncompressed, shown = RATIO.unpack_from(
                self._map, HEADER.size + i * RATIO.size)
            out[ratio] = (held, uncompressed, shown)
        return out

    def close(self) -> None:
        """Unlink the name if no reader claimed it (idempotent); the mapping stays usable."""
        self._unlink()


class StatsReader:
    """A front end's side, for one engine index: finds, claims and reads that engine's file.

    Until the file is found it looks again at most once a second (``record()`` runs per step);
    when another front end claimed it first, it stops looking.
    """

    RETRY_S = 1.0

    def __init__(self, vllm_config: Any, engine: int, directory: Path = DIRECTORY) -> None:
        self.engine = engine
        self.instance = _instance(vllm_config, engine)
        self.directory = directory
        self._map: mmap.mmap | None = None
        self._gave_up = False
        self._next_look = 0.0

    def _candidates(self) -> list[Path]:
        exact = [p for anchor in (os.getpid(), os.getppid())
                 for p in self.directory.glob(_name(anchor, "*", self.engine, self.instance))]
        if exact:
            return exact
        return sorted(self.directory.glob(_name(os.getppid(), "*", self.engine, "*")))

    def _claim(self) -> None:
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + self.RETRY_S
        for path in self._candidates()[:1]:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return  # claimed meanwhile by another front end
            try:
                self._map = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
            try:
                path.unlink()
            except FileNotFoundError:  # another front end unlinked it first: it exports
                self._map.close()
                self._map = None
                self._gave_up = True

    def read(self) -> Snapshot | None:
        """The engine's figures now, or ``None`` (not found yet, claimed elsewhere, or a copy
        torn by the writer three times running)."""
        if self._map is None:
            if self._gave_up:
                return None
            self._claim()
            if self._map is None:
                return None
        for _ in range(3):
            magic, n, seq, shown, projected, rising, stuck, waits = HEADER.unpack_from(
                self._map, 0)
            if magic != MAGIC or seq % 2:
                continue
            records = [RATIO.unpack_from(self._map, HEADER.size + i * RATIO.size)
                       for i in range(n)]
            pairs = _pairs([r[0] for r in records])
            cells = [ESCALATION.unpack_from(self._map, _escalation_offset(n, cell))[0]
                     for cell in range(len(pairs))]
            if HEADER.unpack_from(self._map, 0)[2] != seq:
                continue
            ratios = {r[0]: RatioFigures(dict(zip(COUNTS, r[1:4], strict=True)), r[4], r[5],
                                         bool(r[6])) for r in records}
            escalations = {pair: count for pair, count in zip(pairs, cells, strict=True)
                           if count}
            return Snapshot(projected if shown else None, ratios, escalations,
                            {"yes": rising, "no": stuck}, waits)
        return None


def _pairs(ratios: list[int]) -> list[tuple[int | None, int]]:
    """The escalation cells, in file order: from none or each ratio, to each ratio."""
    return [(low, high) for low in [None, *ratios] for high in ratios]


def _escalation_offset(num_ratios: int, cell: int) -> int:
    return HEADER.size + RATIO.size * num_ratios + ESCALATION.size * cell
