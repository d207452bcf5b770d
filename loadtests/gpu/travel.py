"""What one call to the borrowed GPU machine can carry, and which call carries what.

A call sends the working tree (tracked files, and untracked files git does not ignore) plus at
most 8 ignored paths it names (``carry``), **64 MiB in all**. So the room a call has for a pack is
64 MiB less the tree, which grows with the repository (44 MiB in December 2026, most of it the
bundled checkpoints). Ignored paths a call leaves on the machine stay there while it is held (it
goes back after 30 s idle), so a pack larger than one call's room goes over in several calls that
follow each other at once, and the last one runs the script.

Both packs print their calls when they are built (``make gpu-pack``, ``make -f
recipes/smollm2.mk gpu-train-pack``); ``train_pack.py`` also sizes the base's parts from the room
measured here.

    python loadtests/gpu/travel.py plan .gpu    # the calls for a built pack
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CALL_LIMIT = 64 * 2**20
MAX_CARRIED = 8
#: Left free in every call: what changes between planning and the call (a log, a new note).
MARGIN = 2**20
#: The last call's command for each pack, by the pack's folder name.
SCRIPTS = {".gpu": "OUT=$OUT bash loadtests/gpu_run.sh",
           ".gpu-train": "OUT=$OUT bash loadtests/gpu_train.sh"}


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of what every call sends besides its carried paths: tracked and unignored files."""
    command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listing = subprocess.run(command, cwd=root, capture_output=True, check=True).stdout.decode()
    files = {root / name for name in listing.split("\0") if name}
    return sum(path.stat().st_size for path in files if path.is_file())


def room(root: Path = ROOT) -> int:
    """Bytes one call can carry beside the working tree."""
    return CALL_LIMIT - MARGIN - tree_bytes(root)


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() \
        else path.stat().st_size


@dataclass(frozen=True)
class Call:
    carry: tuple[Path, ...]
    bytes: int


def plan(items: list[Path], room_bytes: int) -> list[Call]:
    """``items`` (files or folders) filled into calls in order, each call within ``room_bytes``
    and ``MAX_CARRIED`` paths: first fit, so a small item rides in an earlier call with space.

    Raises ``ValueError`` naming an item larger than a call's room: it cannot travel whole.
    """
    calls: list[list[Path]] = []
    used: list[int] = []
    for item in items:
        need = size(item)
        if need > room_bytes:
            raise ValueError(f"{item.name} is {need / 2**20:.1f} MiB, more than the "
                             f"{room_bytes / 2**20:.1f} MiB a call carries beside the tree")
        for k, call in enumerate(calls):
            if used[k] + need <= room_bytes and len(call) < MAX_CARRIED:
                call.append(item)
                used[k] += need
                break
        else:
            calls.append([item])
            used.append(need)
    return [Call(tuple(c), u) for c, u in zip(calls, used)]


def describe(calls: list[Call], command: str, root: Path = ROOT) -> str:
    """The calls as a person makes them: what each carries, and the command of the last."""
    lines = []
    for k, call in enumerate(calls, 1):
        carried = ", ".join(str(p.relative_to(root) if p.is_relative_to(root) else p)
                            for p in call.carry)
        run = command if k == len(calls) else "true"
        lines.append(f"call {k} of {len(calls)} ({call.bytes / 2**20:.1f} MiB): "
                     f"carry {carried}; command: {run}")
    return "\n".join(lines)


def pack_items(pack: Path) -> list[Path]:
    """A pack's carried paths: its top-level files and folders, in name order."""
    return sorted(p for p in pack.iterdir() if not p.name.endswith(".part"))


def report(pack: Path, prefix: str) -> bool:
    """Print the calls that carry ``pack`` beside this tree, or why it cannot travel."""
    free = room(ROOT)
    tree = CALL_LIMIT - MARGIN - free
    print(f"{prefix}: the working tree is {tree / 2**20:.1f} MiB, so a call carries "
          f"{free / 2**20:.1f} MiB beside it; the calls follow each other at once "
          "(the machine goes back after 30 s idle):", flush=True)
    command = SCRIPTS.get(pack.name, "OUT=$OUT bash <the pack's script>")
    try:
        calls = plan(pack_items(pack), free)
    except ValueError as err:
        print(f"{prefix}: cannot travel: {err}", flush=True)
        return False
    print(describe(calls, command), flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    plan_cmd = commands.add_parser("plan", help="print the calls that carry a built pack")
    plan_cmd.add_argument("pack", type=Path, help="a built pack: .gpu or .gpu-train")
    args = parser.parse_args(argv)
    if not args.pack.is_dir():
        parser.error(f"{args.pack} is not a built pack (a folder)")
    return 0 if report(args.pack.resolve(), "travel") else 1


if __name__ == "__main__":
    sys.exit(main())
