"""What a call to the GPU machine carries: the working tree plus ignored paths, 64 MiB in all.

``loadtests/gpu/travel.py`` measures the tree and fills a pack's paths into calls. The last test
checks the real plugin pack (``make gpu-pack``, which ``make test`` runs first) against this
checkout's real tree: it fails when the repository grows past the point where the GPU check can
still be carried, which is when someone must act (shrink the tree or cut the pack).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "loadtests" / "gpu"))
import pack  # loadtests/gpu is a folder of scripts, not a package
import travel

MiB = 2**20


def sized(folder: Path, name: str, mib: float) -> Path:
    path = folder / name
    path.write_bytes(b"\0" * int(mib * MiB))
    return path


def test_plan_fills_calls_first_fit_in_order(tmp_path):
    items = [sized(tmp_path, f"part{k}", 15) for k in range(3)] + [sized(tmp_path, "small", 2)]
    calls = travel.plan(items, 18 * MiB)
    assert [[p.name for p in call.carry] for call in calls] == [
        ["part0", "small"], ["part1"], ["part2"]]
    assert [call.bytes for call in calls] == [17 * MiB, 15 * MiB, 15 * MiB]


def test_plan_carries_at_most_eight_paths_a_call(tmp_path):
    items = [sized(tmp_path, f"w{k}", 0.01) for k in range(10)]
    assert [len(call.carry) for call in travel.plan(items, 64 * MiB)] == [8, 2]


def test_plan_refuses_an_item_larger_than_a_call(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    sized(folder, "a.whl", 6)
    sized(folder, "b.whl", 6)
    with pytest.raises(ValueError, match=r"wheels is 12.0 MiB, more than the 10.0 MiB"):
        travel.plan([folder], 10 * MiB)


def test_tree_counts_tracked_and_unignored_files_only(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    sized(tmp_path, "tracked", 1)
    (tmp_path / ".gitignore").write_text("ignored\n")
    subprocess.run([*git, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=tmp_path, check=True)
    sized(tmp_path, "untracked", 2)
    sized(tmp_path, "ignored", 4)
    assert travel.tree_bytes(tmp_path) == 3 * MiB + len("ignored\n")


def test_the_plugin_pack_travels_beside_this_tree():
    if not list(pack.PACK.glob("vllm-*-py.tar.xz")):
        pytest.fail("no GPU pack in .gpu/: build it with `make gpu-pack` (`make test` does)")
    room = travel.room()
    calls = travel.plan(travel.pack_items(pack.PACK), room)  # raises if a path cannot travel
    tree = travel.tree_bytes()
    assert all(tree + call.bytes <= travel.CALL_LIMIT for call in calls)
    assert len(calls) <= 3, [c.carry for c in calls]  # each call costs device time
