"""Smoke test of ``breadcrumbs train``: each stage trains a few steps on a tiny model, its loss
falls, its checkpoint round-trips, and a paused run resumes where it stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from breadcrumbs_vllm.checkpoint import load_checkpoint, read_breadcrumbs_config
from breadcrumbs_vllm.cli import main
from breadcrumbs_vllm.cli.train import resolve_mixed_precision
from breadcrumbs_vllm.evaluation.held_out import training_prompts, unseen_problems
from breadcrumbs_vllm.reference import GenerationRequest
from breadcrumbs_vllm.tasks import get_task
from breadcrumbs_vllm.tokenizer import pad_token_id
from breadcrumbs_vllm.training.config import TrainConfig
from breadcrumbs_vllm.training.losses import (
    distill_kl,
    group_advantages,
    reference_kl,
    token_logprobs,
)
from breadcrumbs_vllm.training.mask import build_beacon_batch
from breadcrumbs_vllm.training.trainer import (
    CONFIG_FILE,
    STATE_FILE,
    Rise,
    Rollouts,
    Run,
    step_rises,
)

TINY = ["--seed", "0", "--rl-problems", "2", "--group", "2", "--max-tokens", "16",
        "--eval-n", "2", "--threads", "2"]


def log_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "training_log.jsonl").read_text().splitlines()]


def first_of_each_group_wins(run: Run) -> Run:
    """Replace the verifier so that, with groups of 2, every group has one reward of each kind."""
    calls = iter(range(100))
    run.task.verify = lambda problem, text: float(next(calls) % 2 == 0)
    return run


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "teacher"
    args = ["train", "teacher", "--out", str(out), "--layers", "1", "--hidden", "64",
            "--sft-steps", "30", "--sft-batch", "8", "--lr", "3e-3", "--rl-steps", "2",
            "--eval-every", "100", "--task-option", "high=12", *TINY]
    assert main([*args, "--max-minutes", "0"]) == 0  # paused before the first step
    assert log_of(out) == [] and (out / STATE_FILE).is_file()
    assert main(["train", "teacher", "--out", str(out), "--resume"]) == 0
    return out


def test_teacher_sft_loss_falls_and_rl_runs(teacher: Path) -> None:
    log = log_of(teacher)
    assert [row["step"] for row in log] == list(range(1, 33))
    sft = [row["sft_loss"] for row in log if "sft_loss" in row]
    assert sum(sft[-5:]) / 5 < sum(sft[:5]) / 5 - 0.5
    rl = [row for row in log if "reward" in row]
    assert len(rl) == 2 and all(0.0 <= row["reward"] <= 1.0 for row in rl)
    assert "acc" in log[-1]  # the last step always evaluates
    # The difficulty knobs are recorded where the student and `breadcrumbs eval` read them.
    assert read_breadcrumbs_config(teacher).task_options == {"high": 12}


def test_teacher_init_continues_a_checkpoint_with_grpo(teacher: Path) -> None:
    out = teacher.parent / "teacher-more-rl"
    # --layers / --hidden are ignored: the checkpoint decides; a zero RL lr keeps it unchanged.
    assert main(["train", "teacher", "--init", str(teacher), "--out", str(out), "--layers", "3",
                 "--sft-steps", "0", "--rl-steps", "2", "--rl-lr", "0", "--eval-every", "100",
                 *TINY]) == 0
    log = log_of(out)
    assert [row["step"] for row in log] == [1, 2] and all("reward" in row for row in log)
    recorded = TrainConfig.from_json((out / "training_config.json").read_text())
    # The checkpoint records where it started relative to itself, so the two can move together.
    assert (recorded.layers, recorded.hidden, recorded.init) == (1, 64, f"../{teacher.name}")
    for a, b in zip(load_checkpoint(teacher)[0].parameters(), load_checkpoint(out)[0].parameters()):
        assert torch.equal(a, b)


def test_teacher_init_task_option_moves_the_curriculum(teacher: Path) -> None:
    """With --init a --task-option replaces that one knob; the SFT batches and the new checkpoint
    follow it, and the checkpoint's other knobs carry over."""
    out = teacher.parent / "teacher-harder"
    assert main(["train", "teacher", "--init", str(teacher), "--out", str(out),
                 "--task-option", "high=20", "--task-option", "count=3", "--sft-steps", "1",
                 "--sft-batch", "2", "--rl-steps", "0", "--eval-every", "100", *TINY]) == 0
    assert read_breadcrumbs_config(out).task_options == {"high": 20, "count": 3}
    recorded = TrainConfig.from_json((out / "training_config.json").read_text())
    assert recorded.task_options == {"high": 20, "count": 3}
    assert main(["train", "teacher", "--init", str(teacher), "--out", str(out.parent / "bad"),
                 "--task-option", "no_such_knob=1", "--sft-steps", "1", *TINY]) == 2


def test_grpo_kl_penalty_keeps_its_reference_across_resume(tmp_path: Path) -> None:
    """The KL reference is the policy RL started from, and a resumed run gets that one back."""
    cfg = TrainConfig(stage="teacher", sft_steps=0, rl_steps=3, rl_problems=2, group=2,
                      max_tokens=8, layers=1, hidden=64, rl_lr=1e-2, kl_coef=0.5)
    run = first_of_each_group_wins(Run(cfg, tmp_path / "teacher"))
    start = {k: v.clone() for k, v in run.teacher.state_dict().items()}

    metrics, _ = run.rollout_step()
    assert metrics["rl_kl"] > 0  # the second PPO epoch has moved away from the start
    run.step = 1
    run.save()
    resumed = Run(cfg, tmp_path / "teacher")
    reference, teacher = resumed.reference.state_dict(), resumed.teacher.state_dict()
    assert all(torch.equal(reference[k], start[k]) for k in start)
    assert not all(torch.equal(teacher[k], start[k]) for k in start)


def test_reference_kl_is_zero_for_equal_policies_and_grows_apart() -> None:
    logits = torch.randn(5, 7)
    assert reference_kl(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    assert reference_kl(logits, logits + torch.randn(5, 7)).item() > 0.01


def test_student_joint_distils_and_round_trips(teacher: Path) -> None:
    out = teacher.parent / "student"
    assert main(["train", "student", "--teacher", str(teacher), "--out", str(out),
                 "--ratios", "2,4", "--rl-steps", "6", "--distill-lr", "1e-2",
                 "--eval-every", "100", *TINY]) == 0
    assert len([row["kl"] for row in log_of(out)]) == 6
    assert all("reward" in row for row in log_of(out))  # every step is a rollout step
    bc = read_breadcrumbs_config(out)
    assert bc.ratios == [2, 4] and bc.teacher == "../student-teacher"
    assert bc.task_options == {"high": 12}  # the student draws the teacher's problems
    assert (out.parent / "student-teacher" / "config.json").is_file()  # the co-trained teacher
    model, _, _ = load_checkpoint(out)
    teacher_model, _, _ = load_checkpoint(teacher)
    beacon = bc.beacon_token_id
    emb = model.get_input_embeddings().weight
    assert not torch.allclose(emb, teacher_model.get_input_embeddings().weight)
    assert torch.isfinite(emb[beacon]).all()
    # A second run with the same seed writes the same weights: the run is reproducible.
    again = teacher.parent / "student-again"
    assert main(["train", "student", "--teacher", str(teacher), "--out", str(again),
                 "--ratios", "2,4", "--rl-steps", "2", "--distill-lr", "1e-2", "--sequential",
                 "--eval-every", "100", *TINY]) == 0
    # A resumed run needs only --out: its recorded config names the teacher.
    assert main(["train", "student", "--out", str(again), "--resume"]) == 0
    assert not (teacher.parent / "student-again-teacher").exists()  # sequential: teacher frozen


def test_student_kl_falls_on_a_fixed_rollout_batch(teacher: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(stage="student", teacher=str(teacher), ratios=[2, 4], rl_steps=1,
                      rl_problems=2, group=2, max_tokens=24, distill_lr=1e-3, sequential=True,
                      warmup=0)
    run = Run(cfg, tmp_path / "student")
    with torch.no_grad():  # a beacon that disrupts the cache, so there is something to learn
        torch.manual_seed(0)
        run.student.get_input_embeddings().weight[run.bc.beacon_token_id] = torch.randn(64)
    rollouts = run.sample(run.task.problems(2, 7))
    kl = [run.student_step(rollouts)["kl"] for _ in range(8)]
    assert kl[-1] < 0.7 * kl[0]


def test_on_policy_rollouts_are_the_students_own_decoding(tiny_checkpoint: Path,
                                                          tmp_path: Path) -> None:
    """A sharpened random teacher, whose greedy decoding changes with every beacon: the rollouts
    must be the student's decoding at the ratios its distillation step then draws."""
    cfg = TrainConfig(stage="student", teacher=str(tiny_checkpoint), ratios=[2, 4], rl_steps=1,
                      rl_problems=3, group=1, max_tokens=24, temperature=0.0, sequential=True,
                      on_policy=True, warmup=0)
    run = Run(cfg, tmp_path / "student")
    rollouts = run.sample(run.task.problems(3, 7))
    requests = [GenerationRequest(p, ratio=r, max_tokens=24)
                for p, r in zip(rollouts.prompts, run.step_ratios(3))]
    own = [r.token_ids for r in run.engine(run.student).generate(requests)]
    teachers = [r.token_ids for r in run.engine(run.teacher).generate(
        [GenerationRequest(p, max_tokens=24) for p in rollouts.prompts])]
    assert rollouts.generations == own != teachers
    with torch.no_grad():  # the teacher scores them, without beacons
        assert torch.equal(rollouts.teacher_logits,
                           run.predict(run.teacher, run.batch(rollouts.prompts, own, [None] * 3)))


def test_switch_paths_rise_once_at_a_boundary_in_about_the_share() -> None:
    cfg = TrainConfig(stage="student", ratios=[2, 4, 8, 16], switch_share=0.25, seed=3)
    rises = [rise for step in range(20) for rise in step_rises(cfg, step, 200)]
    drawn = [rise for rise in rises if rise is not None]
    assert abs(len(drawn) / len(rises) - 0.25) < 0.03
    assert {rise.start for rise in drawn} == {2, 4, 8}  # never from the largest
    assert all(rise.higher > rise.start for rise in drawn)
    for i, rise in enumerate(drawn):
        length = 1 + i % 60
        path = rise.switches(length)
        if length - 1 < rise.start:  # no boundary that a generated token follows
            assert path == ()
            continue
        (at, higher), = path  # exactly one rise
        assert higher == rise.higher and at % rise.start == 0 and 0 < at < length
    # Uniform over the boundaries: 4, 8, 12, 16 for 17 tokens at ratio 4.
    ats = [Rise(4, 16, k / 400).switches(17)[0][0] for k in range(400)]
    assert {at: ats.count(at) for at in set(ats)} == {4: 100, 8: 100, 12: 100, 16: 100}
    # A function of (config, step); without a share, nothing rises.
    assert step_rises(cfg, 7, 50) == step_rises(cfg, 7, 50) != step_rises(cfg, 8, 50)
    assert step_rises(TrainConfig(stage="student"), 7, 50) == [None] * 50
    for share, ratios in ((1.5, [2, 4]), (0.5, [4])):
        with pytest.raises(ValueError, match="--switch-share"):
            TrainConfig(stage="student", ratios=ratios, switch_share=share)


def student_step_batch(run: Run, prompts: list[list[int]], generations: list[list[int]]):
    """One student step on the teacher's logits for these sequences (the KL must be finite);
    the beacon batch the step built for the student."""
    with torch.no_grad():
        logits = run.predict(run.teacher, run.batch(prompts, generations, [None] * len(prompts)))
    built = []
    batch_of = run.batch
    run.batch = lambda *args, **kwargs: built.append(batch_of(*args, **kwargs)) or built[-1]
    rollouts = Rollouts(prompts, generations, torch.ones(len(prompts)), logits)
    assert torch.isfinite(torch.tensor(run.student_step(rollouts)["kl"]))
    return built[0]


def test_student_step_masks_a_rising_sequence_along_its_path(tiny_checkpoint: Path,
                                                            tmp_path: Path) -> None:
    cfg = TrainConfig(stage="student", teacher=str(tiny_checkpoint), ratios=[2, 4], rl_steps=1,
                      switch_share=1.0, sequential=True, warmup=0)
    run = Run(cfg, tmp_path / "student")
    prompts = [[5, 6, 7], [8, 9]]
    generations = [list(range(10, 30)), list(range(30, 41))]
    built = student_step_batch(run, prompts, generations)
    rises = step_rises(cfg, 0, 2)
    paths = [rise.switches(len(g)) for rise, g in zip(rises, generations)]
    assert all(rise.start == 2 and len(path) == 1 for rise, path in zip(rises, paths))
    expected = build_beacon_batch(prompts, generations, [2, 2], run.bc.beacon_token_id,
                                  pad_token_id(run.tokenizer), switches=paths)
    fixed = build_beacon_batch(prompts, generations, [2, 2], run.bc.beacon_token_id,
                               pad_token_id(run.tokenizer))
    assert torch.equal(built.attention_mask, expected.attention_mask)
    assert torch.equal(built.input_ids, expected.input_ids)
    assert built.input_ids.shape != fixed.input_ids.shape  # fewer beacons after the rise


def test_a_plain_share_of_sequences_is_distilled_without_beacons(tiny_checkpoint: Path,
                                                                 tmp_path: Path) -> None:
    """``plain_share`` turns about that share of the sequences that do not rise into ``None``
    (the teacher's own layout), and leaves every other draw as a run without it makes them."""
    def draws(out: str, **knobs) -> list[tuple[int | None, Rise | None]]:
        cfg = TrainConfig(stage="student", teacher=str(tiny_checkpoint), ratios=[2, 4, 8],
                          rl_steps=1, sequential=True, seed=5, **knobs)
        run = Run(cfg, tmp_path / out)
        pairs = []
        for step in range(10):
            run.step = step
            pairs += zip(run.step_ratios(100), run.step_rises(100), strict=True)
        return pairs

    without, plain = draws("a"), draws("b", plain_share=0.3)
    assert abs([r for r, _ in plain].count(None) / len(plain) - 0.3) < 0.05
    assert all(p in (None, w) for (w, _), (p, _) in zip(without, plain))
    rising = draws("c", plain_share=0.3, switch_share=0.5)
    assert any(r is None for r, _ in rising)
    assert all(r == rise.start for r, rise in rising if rise is not None)  # a rise keeps beacons


def test_student_step_lays_a_plain_sequence_out_as_the_teacher_does(tiny_checkpoint: Path,
                                                                    tmp_path: Path) -> None:
    cfg = TrainConfig(stage="student", teacher=str(tiny_checkpoint), ratios=[2], rl_steps=1,
                      plain_share=0.5, sequential=True, warmup=0, seed=1)
    run = Run(cfg, tmp_path / "student")
    prompts = [[5, 6, 7], [8, 9], [10, 11], [12]]
    generations = [list(range(20, 30 + k)) for k in range(4)]
    drawn = run.step_ratios(4)
    assert None in drawn and 2 in drawn
    built = student_step_batch(run, prompts, generations)
    expected = build_beacon_batch(prompts, generations, drawn, run.bc.beacon_token_id,
                                  pad_token_id(run.tokenizer))
    assert torch.equal(built.input_ids, expected.input_ids)
    assert torch.equal(built.attention_mask, expected.attention_mask)


def test_student_ratios_and_plain_share_refuse_bad_input(teacher: Path, tmp_path: Path,
                                                         capsys) -> None:
    for flags, message in ((["--ratios", "none,4"], "use --plain-share"),
                           (["--plain-share", "1"], "--plain-share must be in [0, 1)")):
        code = main(["train", "student", "--teacher", str(teacher), "--trace-steps", "1",
                     "--out", str(tmp_path / "s"), *flags, *TINY])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "\n" not in err, err
        assert not (tmp_path / "s").exists()


def test_on_policy_student_trains_and_needs_sequential(teacher: Path, capsys) -> None:
    out = teacher.parent / "student-on-policy"
    args = ["train", "student", "--teacher", str(teacher), "--out", str(out), "--ratios", "2,4",
            "--rl-steps", "2", "--on-policy", "--eval-every", "100", *TINY]
    assert main(args) == 2
    assert "--on-policy needs --sequential" in capsys.readouterr().err
    assert main([*args, "--group", "1"]) == 2  # GRPO needs groups; a frozen teacher does not
    assert "--group >= 2" in capsys.readouterr().err
    assert main([*args, "--sequential", "--group", "1"]) == 0
    log = log_of(out)
    assert len(log) == 2 and all({"kl", "reward"} <= row.keys() for row in log)
    assert TrainConfig.from_json((out / CONFIG_FILE).read_text()).on_policy


def test_existing_run_needs_resume(teacher: Path, capsys) -> None:
    assert main(["train", "teacher", "--out", str(teacher), "--sft-steps", "1"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_distill_kl_ignores_beacons_and_is_zero_for_equal_models() -> None:
    torch.manual_seed(0)
    teacher = build_beacon_batch([[1, 2]], [[3, 4, 5, 6, 7]], [None], beacon_id=9, pad_id=0)
    student = build_beacon_batch([[1, 2]], [[3, 4, 5, 6, 7]], [2], beacon_id=9, pad_id=0)
    assert torch.equal(student.targets, teacher.targets)
    t_logits = torch.randn(1, teacher.input_ids.shape[1], 10)
    s_logits = torch.randn(1, student.input_ids.shape[1], 10)
    # Put the teacher's distributions at the student's non-beacon predicting positions.
    s_logits.view(-1, 10)[student.index] = teacher.gather(t_logits)
    assert distill_kl(student.gather(s_logits), teacher.gather(t_logits)).abs() < 1e-5
    s_logits[student.is_beacon] = 100.0  # beacon outputs are ignored
    assert distill_kl(student.gather(s_logits), teacher.gather(t_logits)).abs() < 1e-5
    s_logits.view(-1, 10)[student.index[0], 0] += 1.0  # a predicting position is not
    assert distill_kl(student.gather(s_logits), teacher.gather(t_logits)) > 1e-3


def test_group_advantages_are_relative_within_groups() -> None:
    adv = group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), group=2)
    assert adv[0] > 0 > adv[1] and adv[2] == adv[3] == 0


def test_student_trace_warm_start_distils_before_rollouts(teacher: Path) -> None:
    out = teacher.parent / "student-traces"
    assert main(["train", "student", "--teacher", str(teacher), "--out", str(out),
                 "--ratios", "2,4", "--trace-steps", "12", "--trace-batch", "4", "--rl-steps", "1",
                 "--warmup", "2", "--distill-lr", "1e-2", "--sequential", "--eval-every", "100",
                 *TINY]) == 0
    log = log_of(out)
    assert [("reward" in row) for row in log] == [False] * 12 + [True]
    kl = [row["kl"] for row in log[:12]]
    assert all(k >= 0 for k in kl) and sum(kl[-3:]) < sum(kl[:3])
    assert not any("ce" in row for row in log)


def test_student_trace_cross_entropy_and_init(teacher: Path) -> None:
    warm = teacher.parent / "student-traces"  # from the test above
    out = teacher.parent / "student-trace-ce"
    assert main(["train", "student", "--teacher", str(teacher), "--init", str(warm),
                 "--out", str(out), "--ratios", "2,4", "--trace-steps", "12", "--trace-batch", "4",
                 "--trace-ce", "1", "--warmup", "2", "--distill-lr", "1e-2", "--sequential",
                 "--eval-every", "100", *TINY]) == 0
    log = log_of(out)
    assert len(log) == 12 and all("ce" in row for row in log)  # a warm start alone is a run
    ce = [row["ce"] for row in log]
    assert sum(ce[-3:]) < sum(ce[:3])
    # With a zero learning rate a run started from --init stays exactly that model.
    again = teacher.parent / "student-from-init"
    assert main(["train", "student", "--teacher", str(teacher), "--init", str(warm),
                 "--out", str(again), "--ratios", "2,4", "--rl-steps", "1", "--distill-lr", "0",
                 "--sequential", "--eval-every", "100", *TINY]) == 0
    start, _, _ = load_checkpoint(warm)
    for a, b in zip(start.parameters(), load_checkpoint(again)[0].parameters()):
        assert torch.equal(a, b)


def test_student_bf16_autocast_trains_in_float32_weights(teacher: Path) -> None:
    fp32 = teacher.parent / "student-traces"  # from the test above: same seed, float32
    out = teacher.parent / "student-bf16"
    # Its own process: accelerate fixes the precision once per process, as `accelerate launch` does.
    proc = subprocess.run(
        [sys.executable, "-m", "breadcrumbs_vllm.cli", "train", "student",
         "--teacher", str(teacher),
         "--out", str(out), "--ratios", "2,4", "--trace-steps", "12", "--trace-batch", "4",
         "--rl-steps", "1", "--warmup", "2", "--distill-lr", "1e-2", "--sequential",
         "--eval-every", "100", "--mixed-precision", "bf16", *TINY],
        check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "training_config.json").read_text())["mixed_precision"] == "bf16"
    kl = [row["kl"] for row in log_of(out)[:12]]
    assert sum(kl[-3:]) < sum(kl[:3])
    # Step 1 sees the same batch and the same weights in both runs: only the precision differs.
    first = log_of(fp32)[0]["kl"]
    assert kl[0] != first and kl[0] == pytest.approx(first, rel=0.05)
    model, _, _ = load_checkpoint(out)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_mixed_precision_auto_follows_the_device(capsys) -> None:
    assert resolve_mixed_precision("auto", native=True) == "bf16"
    assert resolve_mixed_precision("auto", native=False) == "no"
    assert resolve_mixed_precision("no", native=True) == "no"
    assert capsys.readouterr().err == ""
    # bf16 asked of a device without it is honoured, with a warning: it is slow, not wrong.
    assert resolve_mixed_precision("bf16", native=False) == "bf16"
    assert "no native bf16" in capsys.readouterr().err


def test_grpo_skips_the_update_when_no_group_has_signal(teacher: Path, tmp_path: Path) -> None:
    """All-equal rewards give zero advantages: the policy must not move (no Adam drift)."""
    cfg = TrainConfig(stage="teacher", sft_steps=0, rl_steps=1, rl_problems=2, group=2,
                      max_tokens=8, layers=1, hidden=64, rl_lr=1e-2)
    run = Run(cfg, tmp_path / "teacher")
    before = [p.detach().clone() for p in run.teacher.parameters()]
    metrics, rollouts = run.rollout_step()  # an untrained model earns no reward in 8 tokens
    assert rollouts.rewards.sum() == 0 and "rl_loss" not in metrics
    assert all(torch.equal(a, b) for a, b in zip(before, run.teacher.parameters()))


def test_grpo_raises_the_rewarded_sequences_and_lowers_the_others(tmp_path: Path) -> None:
    """Each token's advantage is its own sequence's: the rewarded sample gains log-probability."""
    cfg = TrainConfig(stage="teacher", sft_steps=0, rl_steps=1, rl_problems=2, group=2,
                      max_tokens=8, layers=1, hidden=64, rl_lr=1e-3, temperature=1.0)
    run = first_of_each_group_wins(Run(cfg, tmp_path / "teacher"))

    metrics, rollouts = run.rollout_step()
    assert rollouts.rewards.tolist() == [1.0, 0.0, 1.0, 0.0] and "rl_loss" in metrics
    batch = run.batch(rollouts.prompts, rollouts.generations, [None] * 4)

    def per_sequence(logits: torch.Tensor) -> torch.Tensor:
        return torch.zeros(4).index_add_(0, batch.owner, token_logprobs(logits, batch.targets))

    before = per_sequence(rollouts.teacher_logits)  # the sampling policy's
    with torch.no_grad():
        after = per_sequence(run.predict(run.teacher, batch))
    assert after[0] > before[0] and after[2] > before[2]
    assert after[1] < before[1] and after[3] < before[3]


def test_bench_training_prints_one_row_per_setting() -> None:
    """The packing benchmark runs end to end (figures are not asserted: timings are no test)."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "loadtests" / "bench_training.py"),
                           "--model", str(root / "models" / "countdown-teacher"), "--batch", "4",
                           "--rounds", "2", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split()[:2] for line in done.stdout.splitlines()
            if line.startswith(("padded ", "packed "))]
    assert rows == [["padded", "float32"], ["packed", "float32"],
                    ["padded", "bf16"], ["packed", "bf16"]]
    assert "padding share of the batch" in done.stdout


def test_held_out_replays_exactly_the_problems_a_lineage_trained_on(teacher: Path,
                                                                   tmp_path: Path, capsys) -> None:
    """What `breadcrumbs eval --held-out-from` skips is what the runs drew, no more, no less."""
    cfg = TrainConfig(stage="student", teacher=str(teacher), task_options={"high": 12},
                      trace_steps=2, sft_batch=4, rl_steps=1, rl_problems=2, group=2,
                      max_tokens=8, eval_every=100, eval_n=1, sequential=True)
    run = Run(cfg, tmp_path / "student")
    drawn: list[str] = []
    draw = run.task.problems

    def recording(n: int, seed: int):
        problems = draw(n, seed)
        if seed != cfg.eval_seed:  # the periodic eval's problems are not training problems
            drawn.extend(p.prompt for p in problems)
        return problems

    run.task.problems = recording
    assert run.train()
    assert len(drawn) == 2 * 4 + 2
    assert training_prompts(tmp_path / "student") == set(drawn) | training_prompts(teacher)
    assert len(training_prompts(teacher)) > 30 * 8 // 2  # 30 SFT batches of 8, 2 GRPO batches

    # A run continued from it and moved (as into models/) names its origin relative to itself.
    moved = tmp_path / "moved" / "continued"
    moved.mkdir(parents=True)
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    config["breadcrumbs"]["teacher"] = str(teacher)
    (moved / "config.json").write_text(json.dumps(config))
    record = json.loads((tmp_path / "student" / CONFIG_FILE).read_text())
    (moved / CONFIG_FILE).write_text(json.dumps(record | {"seed": 7, "init": "../../student"}))
    assert training_prompts(moved) > training_prompts(tmp_path / "student")

    task = get_task("countdown", high=12)
    first = task.problems(8, 99)
    kept, skipped = unseen_problems(task, 5, 99, {p.prompt for p in first[:3]})
    assert skipped == 3 and [p.prompt for p in kept] == [p.prompt for p in first[3:]]

    out = tmp_path / "held-out.json"
    assert main(["eval", "--model", str(tmp_path / "student"), "--held-out-from",
                 str(tmp_path / "student"), "--n", "2", "--max-tokens", "8", "--ratios", "2",
                 "--baselines", "", "--out", str(out)]) == 0
    assert "held out: skipped" in capsys.readouterr().out
    assert json.loads(out.read_text())[0]["n"] == 2
