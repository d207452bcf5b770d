"""Task families: solver traces verify, corrupted answers do not, verifiers are total functions."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from breadcrumbs_vllm.tasks import TASKS, get_task, parse_task_options
from breadcrumbs_vllm.tasks.base import MAX_ANSWER_CHARS, Problem, final_answer, parse_int
from breadcrumbs_vllm.tasks.countdown import apply_op, evaluate
from breadcrumbs_vllm.tasks.stargraph import LETTERS
from breadcrumbs_vllm.tokenizer import ALPHABET

NAMES = sorted(TASKS)
seeds = st.integers(min_value=0, max_value=2**32 - 1)
SETTINGS = settings(max_examples=60, deadline=None)


def one(name: str, seed: int, **knobs) -> Problem:
    return get_task(name, **knobs).problems(1, seed)[0]


def with_answer(trace: str, answer: str) -> str:
    """The trace with its final line replaced by ``Answer: <answer>``."""
    return trace.rsplit("\n", 1)[0] + f"\nAnswer: {answer}"


# --- properties every task shares -------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(seed=seeds)
def test_solver_trace_verifies_and_prompt_is_clean(name, seed):
    task = get_task(name)
    problem = task.problems(1, seed)[0]
    trace = task.solve(problem)
    assert task.verify(problem, trace) == 1.0
    assert trace.splitlines()[-1].startswith("Answer: ")
    for text in (problem.prompt, trace):
        assert set(text) <= set(ALPHABET), "outside the char-level tokenizer's alphabet"
    assert "\n" not in problem.prompt and len(problem.prompt) < 120
    assert json.loads(json.dumps(problem.data)) == problem.data


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(seed=seeds, data=st.data())
def test_truncated_trace_scores_zero(name, seed, data):
    task = get_task(name)
    problem = task.problems(1, seed)[0]
    trace = task.solve(problem)
    cut = data.draw(st.integers(0, trace.rindex("\nAnswer:")))
    assert task.verify(problem, trace[:cut]) == 0.0


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(seed=seeds, junk=st.text(max_size=300))
def test_verifier_never_raises_on_arbitrary_text(name, seed, junk):
    task = get_task(name)
    problem = task.problems(1, seed)[0]
    for completion in (junk, f"Answer: {junk}", f"{task.solve(problem)}\nAnswer:{junk}"):
        assert task.verify(problem, completion) in (0.0, 1.0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("garbage", [
    "", "Answer:", "Answer: ", "Answer: \n", "no answer here", "Answer: 9" * 50,
    "Answer: " + "9" * 5000, "Answer: " + "(" * 3000, "Answer: 9**9**9**9", "Answer: 1/0",
    "Answer: x=1e9, y=nan, z=inf", "Answer: \u0663,\u0664", "Answer: ,,,", "Answer: x==1",
    "Answer: " + "1," * 90, "Answer: " + "x=" + "1" * 300,
])
def test_garbage_scores_zero(name, garbage):
    task = get_task(name)
    assert task.verify(task.problems(1, 0)[0], garbage) == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_generation_is_deterministic_per_seed(name):
    task = get_task(name)
    assert task.problems(20, 7) == task.problems(20, 7)
    assert task.problems(20, 7) != task.problems(20, 8)


def test_final_answer_takes_the_last_answer_line():
    assert final_answer("Answer: 1\nmore\nAnswer:  2 \nafter") == "2"
    assert final_answer("no answer") is None
    assert final_answer("Answer:") == ""
    assert final_answer("Answer: " + "1" * (MAX_ANSWER_CHARS + 1)) is None


def test_parse_int_is_ascii_and_bounded():
    assert parse_int(" -12 ") == -12 and parse_int("+3") == 3
    for bad in ("", "1e3", "1.0", "\u0663", "9" * 10, "--1", "1 2"):
        assert parse_int(bad) is None


def test_registry_rejects_unknown_names_and_knobs():
    with pytest.raises(ValueError, match="unknown task 'x'; known: countdown, linsys, stargraph"):
        get_task("x")
    with pytest.raises(ValueError, match="linsys"):
        get_task("linsys", nonsense=1)


def test_task_options_parse_json_values_and_reject_bare_keys():
    options = parse_task_options(["high=12", "target_range=[10,60]", "mode=fast"])
    assert options == {"high": 12, "target_range": [10, 60], "mode": "fast"}
    assert get_task("countdown", **{k: options[k] for k in ("high", "target_range")}).high == 12
    assert parse_task_options(None) == {}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_task_options(["high"])


# --- Countdown ---------------------------------------------------------------------------------

STEP = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)(?: (x|\[[\d ]+\]))?")
BACK = re.compile(r"back((?: \d+[-+*/]\d+=\d+)*) \[([\d ]+)\]")


def replay(numbers: list[int], target: int, trace: str, restate_path: bool) -> None:
    """Re-run a Countdown trace as a depth-first search: every step is legal in the current
    state, every ``back`` returns to the state it names (restating the steps that reached it
    when ``restate_path``), and the last step makes the target."""
    stack = [(Counter(numbers), [])]  # each open state and the steps that reached it
    lines = trace.splitlines()
    for line in lines[:-2]:
        if back := BACK.fullmatch(line):
            stack.pop()
            state, steps = stack[-1]
            assert Counter(map(int, back[2].split())) == state
            assert back[1].split() == (steps if restate_path else [])
            continue
        a, op, b, r, tail = STEP.fullmatch(line).groups()
        (a, b, r), (state, steps) = map(int, (a, b, r)), stack[-1]
        assert state[a] and state[b] and (a != b or state[a] >= 2) and a >= b
        assert apply_op(a, op, b) == r
        after = state - Counter([a, b]) + Counter([r])
        if tail == "x":
            assert sum(after.values()) == 1 and r != target
        else:
            assert tail and Counter(map(int, tail[1:-1].split())) == after
            stack.append((after, [*steps, line.split(" ")[0]]))
    a, op, b, r, tail = STEP.fullmatch(lines[-2]).groups()
    assert tail is None and int(r) == target == apply_op(int(a), op, int(b))


@pytest.mark.parametrize("restate_path", [False, True])
@SETTINGS
@given(seed=seeds)
def test_countdown_trace_is_a_depth_first_search(restate_path, seed):
    task = get_task("countdown", restate_path=restate_path)
    problem = task.problems(1, seed)[0]
    trace = task.solve(problem)
    replay(problem.data["numbers"], problem.data["target"], trace, restate_path)
    assert trace.count("\nback ") >= 1  # default min_backtracks
    # The diagnosis replays it too: no faulty line, whatever the answer line says.
    assert task.diagnose(problem, trace) == "correct"
    assert task.diagnose(problem, trace.rsplit("\n", 1)[0]) == "no answer"
    assert task.diagnose(problem, with_answer(trace, str(problem.data["target"]))) == "wrong answer"


@SETTINGS
@given(seed=seeds)
def test_countdown_corrupted_answers_score_zero(seed):
    task = get_task("countdown")
    problem = task.problems(1, seed)[0]
    trace = task.solve(problem)
    expr = final_answer(trace)
    numbers = problem.data["numbers"]
    absent = max(numbers) + 1
    used = Counter(map(int, re.findall(r"\d+", expr)))
    unused = Counter(numbers) - used
    first = re.match(r"\(*(\d+)", expr).group(1)
    corrupted = [
        expr.replace(first, str(absent), 1),  # a number that was not given
        f"{expr}=" + str(problem.data["target"]),
        str(problem.data["target"]),
    ]
    if unused[int(first)] < 2:
        corrupted.append(f"({expr})*{first}/{first}")  # same value, a number used too often
    if unused:
        corrupted.append(f"{expr}+{next(iter(unused))}")  # uses legal numbers, wrong value
    for answer in corrupted:
        assert task.verify(problem, with_answer(trace, answer)) == 0.0, answer
    assert task.verify(problem, with_answer(trace, " ".join(expr))) == 1.0  # spaces are fine


# The module docstring's example: 19 9 15 16 -> 21.
EXAMPLE = Problem("countdown", "Use 19 9 15 16 to make 21 with + - * /, each at most once.",
                  {"numbers": [19, 9, 15, 16], "target": 21})
EXAMPLE_TRACE = """15+9=24 [19 16 24]
24-16=8 [19 8]
19+8=27 x
back [19 16 24]
19+16=35 [24 35]
35-24=11 x
back [19 16 24]
24-19=5 [16 5]
16+5=21
Answer: 16+(15+9-19)"""


@pytest.mark.parametrize("line,replacement,fault", [
    (0, "15+9=23 [19 16 23]", "arithmetic"),
    (0, "15+8=23 [19 16 23]", "operand"),  # there is no 8 to use
    (4, "19+19=38 [16 24 38]", "operand"),  # one 19 only
    (0, "15+9=24 [19 24]", "state"),
    (3, "back [19 16 25]", "backtrack"),
    # Backtracking two levels at once is sound; the next line is then checked at the root.
    (6, "back [19 9 15 16]", "operand"),
    (2, "19+8=27", "verdict"),  # claims the target
    (8, "16+5=21 x", "verdict"),  # calls the target a miss
    (1, "24 minus 16", "format"),
    (3, "back to the start", "format"),
])
def test_countdown_diagnose_names_the_first_faulty_line(line, replacement, fault):
    task = get_task("countdown")
    assert task.solve(EXAMPLE) == EXAMPLE_TRACE
    lines = EXAMPLE_TRACE.splitlines()
    lines[line] = replacement
    # The answer is broken too, so that every corruption is a failed completion.
    text = with_answer("\n".join(lines), "16+15+9")
    assert task.diagnose(EXAMPLE, text) == fault


def test_countdown_restated_path_is_checked():
    """With ``restate_path`` each ``back`` line carries the steps to its state, and a wrong or
    missing restatement is a ``backtrack`` fault."""
    task = get_task("countdown", restate_path=True)
    restated = EXAMPLE_TRACE.replace("back [19 16 24]", "back 15+9=24 [19 16 24]")
    assert task.solve(EXAMPLE) == restated
    for wrong in ("back 15+8=23 [19 16 24]", "back [19 16 24]", "back 15+9=24 24-16=8 [19 16 24]"):
        text = with_answer(restated.replace("back 15+9=24 [19 16 24]", wrong, 1), "16+15+9")
        assert task.diagnose(EXAMPLE, text) == "backtrack", wrong
    # A sound trace with a broken answer line only fails on that line.
    assert task.diagnose(EXAMPLE, with_answer(restated, "16+15+9")) == "wrong answer"


@pytest.mark.parametrize("expr,numbers,value", [
    ("2*7/2", [7, 2, 2], 7),
    ("7/2*2", [7, 2, 2], None),  # 7/2 is not exact
    ("7*(2/2)", [7, 2, 2], 7),
    ("3/(5-5)", [5, 5, 3], None),  # division by zero
    ("5-5-3", [5, 5, 3], -3),  # negative integers are integers
    ("-3+5", [5, 3], None),  # no unary minus
    ("3**5", [3, 5], None),
    ("(3+5", [3, 5], None),
    ("3+5)", [3, 5], None),
    ("3+5", [3], None),
    ("03+5", [3, 5], None),
    ("", [3], None),
    ("()", [3], None),
    ("3 + 5", [3, 5], 8),
])
def test_countdown_evaluator(expr, numbers, value):
    assert evaluate(expr, numbers) == value


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="0123456789+-*/() ", max_size=120),
       numbers=st.lists(st.integers(0, 99), min_size=1, max_size=6))
def test_countdown_evaluator_is_total_on_its_own_alphabet(text, numbers):
    value = evaluate(text, numbers)
    assert value is None or isinstance(value, int)


def test_countdown_knobs_change_the_problems():
    base = one("countdown", 3)
    five = one("countdown", 3, count=5, low=30, high=60, target_range=(100, 300))
    assert len(base.data["numbers"]) == 4 and len(five.data["numbers"]) == 5
    assert all(30 <= n <= 60 for n in five.data["numbers"])
    assert 100 <= five.data["target"] <= 300
    easy = get_task("countdown", min_backtracks=0)
    assert any("back" not in easy.solve(p) for p in easy.problems(20, 0))


# --- LinSys ------------------------------------------------------------------------------------

def linsys_solution(trace: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"([xyz])=(-?\d+)", final_answer(trace))}


@SETTINGS
@given(seed=seeds)
def test_linsys_answers(seed):
    task = get_task("linsys")
    problem = task.problems(1, seed)[0]
    trace = task.solve(problem)
    sol = linsys_solution(trace)
    good = [", ".join(f"{k}={v}" for k, v in reversed(sol.items())),
            " , ".join(f"{k} = {v}" for k, v in sol.items()),
            ",".join(f"{k}={v:+d}" for k, v in sol.items())]
    for answer in good:
        assert task.verify(problem, with_answer(trace, answer)) == 1.0, answer
    wrong = {**sol, "y": sol["y"] + 1}
    bad = [", ".join(f"{k}={v}" for k, v in wrong.items()),
           ", ".join(f"{k}={v}" for k, v in list(sol.items())[:2]),  # an unknown missing
           ", ".join(f"{k}={v}" for k, v in sol.items()) + ", x=" + str(sol["x"]),  # repeated
           ", ".join(f"{k}={v}" for k, v in sol.items()) + ", w=0",
           " ".join(f"{k}={v}" for k, v in sol.items())]  # no separators
    for answer in bad:
        assert task.verify(problem, with_answer(trace, answer)) == 0.0, answer


def test_linsys_knobs_change_the_problems():
    two = get_task("linsys", unknowns=2, coef_max=2, value_max=3).problems(30, 0)
    assert all(len(p.data["matrix"]) == 2 and "z" not in p.prompt for p in two)
    assert all(abs(c) <= 2 for p in two for row in p.data["matrix"] for c in row)
    assert all(len(one("linsys", s).data["matrix"]) == 3 for s in range(5))


@SETTINGS
@given(seed=seeds)
def test_linsys_show_work_writes_each_operation_and_the_same_equations(seed):
    """``show_work`` adds the arithmetic, and only that: the same problem, the same derived
    equations and answer as the short trace, and every product and sum written is right."""
    short, worked = get_task("linsys", coef_max=3), get_task("linsys", coef_max=3, show_work=True)
    problem = short.problems(1, seed)[0]
    assert worked.problems(1, seed)[0] == problem
    short_lines, worked_lines = short.solve(problem).split("\n"), worked.solve(problem).split("\n")
    assert len(short_lines) == len(worked_lines)
    for plain, shown in zip(short_lines, worked_lines):
        label = plain.partition("=")[0]
        if not re.fullmatch(r"E\d+", label):  # back-substitution and the answer are unchanged
            assert shown == plain
            continue
        assert re.split(r": |, ", shown)[-1] == plain.split(": ")[-1]  # the same new equation
        columns = re.findall(r"[xyzr]: (\d+)\*\(?(-?\d+)\)?([+-]\d+)\*\(?(-?\d+)\)?="
                             r"(-?\d+)([+-]\d+)=(-?\d+)", shown)
        assert len(columns) == 4  # x, y, z and the right-hand side
        for a, t, b, p, at, bp, total in columns:
            assert int(a) * int(t) == int(at) and int(b) * int(p) == int(bp)
            assert int(at) + int(bp) == int(total)


@SETTINGS
@given(seed=seeds)
def test_linsys_show_work_2_copies_the_cancelled_coefficients_first(seed):
    one, two = get_task("linsys", show_work=1), get_task("linsys", show_work=2)
    problem = one.problems(1, seed)[0]
    for plain, shown in zip(one.solve(problem).split("\n"), two.solve(problem).split("\n"),
                            strict=True):
        if not plain.startswith("E") or ":" in plain.partition("=")[0]:
            assert shown == plain  # back-substitution and the answer are level 1's
            continue
        prefix = re.match(r"cancel ([xyz]): (E\d+) (-?\d+), (E\d+) (-?\d+), ", shown)
        if prefix is None:
            assert shown == plain and not re.match(r"E\d+=", plain)
            continue
        var, target, t, pivot, p = prefix.groups()
        assert shown[prefix.end():] == plain
        assert re.match(rf"E\d+=\d*{target}[+-]\d*{pivot}: ", plain)  # target, then pivot
        column = re.search(rf"{var}: \d+\*\(?(-?\d+)\)?[+-]\d+\*\(?(-?\d+)\)?=", plain)
        assert column.groups() == (t, p)  # the cancelled column's operands


@SETTINGS
@given(seed=seeds)
def test_linsys_show_work_3_writes_the_back_substitution_products(seed):
    two, three = get_task("linsys", show_work=2), get_task("linsys", show_work=3)
    problem = two.problems(1, seed)[0]
    for plain, shown in zip(two.solve(problem).split("\n"), three.solve(problem).split("\n"),
                            strict=True):
        moved = re.fullmatch(r"(E\d+: -?\d*[xyz]=)(-?\d+)((?:[+-]\d+\*\(?-?\d+\)?)+)=(-?\d+)(, .*)",
                             plain)
        if moved is None:
            assert shown == plain
            continue
        head, b, terms, total, tail = moved.groups()
        products = "".join(f"{int(c) * int(v):+d}"
                           for c, v in re.findall(r"([+-]\d+)\*\(?(-?\d+)\)?", terms))
        assert shown == f"{head}{b}{terms}={b}{products}={total}{tail}"
        assert int(b) + sum(int(x) for x in re.findall(r"[+-]\d+", products)) == int(total)


def test_linsys_diagnose_names_the_first_line_that_leaves_the_solver():
    task = get_task("linsys", coef_max=3, show_work=3)
    problem = task.problems(1, 0)[0]
    trace = task.solve(problem)
    wrong = trace.rpartition("\n")[0] + "\nAnswer: x=1, y=4, z=-8"  # every failure below ends so
    assert task.diagnose(problem, trace) == "correct"
    assert task.diagnose(problem, wrong) == "wrong answer"
    assert task.diagnose(problem, trace.rpartition("\n")[0]) == "no answer"
    first, rest = wrong.split("\n", 1)
    assert first.startswith("cancel x: E2 -2, E1 1, E4=E2+2E1: x: 1*(-2)+2*1=-2+2=0, y: ")
    for edited, fault in [(first.replace("E2 -2", "E2 2"), "elimination: operand"),
                          (first.replace("E4=E2+2E1", "E4=E2-2E1"), "elimination: multipliers"),
                          (first.replace("1*(-2)+2*1", "1*2+2*1"), "elimination: operand"),
                          (first.replace("=-2+2=0", "=-2+2=1"), "elimination: arithmetic"),
                          (first.replace("/5: -y=-4", "/5: -y=-3"), "elimination: equation"),
                          (first.replace("y: ", "y "), "format")]:
        assert edited != first and task.diagnose(problem, edited + "\n" + rest) == fault, fault
    back = wrong.replace("=-13+8+8=3", "=-13+8+8=2")
    assert back != wrong and task.diagnose(problem, back) == "back-substitution"


# --- StarGraph ---------------------------------------------------------------------------------

@SETTINGS
@given(seed=seeds)
def test_stargraph_answers(seed):
    task = get_task("stargraph")
    problem = task.problems(1, seed)[0]
    trace = task.solve(problem)
    path = [int(v) for v in final_answer(trace).split(",")]
    assert path[0] == problem.data["centre"] and path[-1] == problem.data["target"]
    assert task.verify(problem, with_answer(trace, " , ".join(map(str, path)))) == 1.0
    other_leaf = next(v for _, v in problem.data["edges"]
                      if v != path[-1] and all(u != v for u, _ in problem.data["edges"]))
    bad = [path[::-1], path[1:], path[:-1], path + [path[-1]], path[:-1] + [other_leaf],
           [*path[:2], path[2] + 1000, *path[3:]]]
    for wrong in bad:
        assert task.verify(problem, with_answer(trace, ",".join(map(str, wrong)))) == 0.0, wrong
    arms = trace.splitlines()[:-1]
    assert all(line.endswith(" x") for line in arms[:-1]) and not arms[-1].endswith(" x")


def test_stargraph_knobs_change_the_problems():
    p = one("stargraph", 0, arms=5, length=2, max_node=20)
    assert len(p.data["edges"]) == 10
    assert all(0 <= n <= 20 for e in p.data["edges"] for n in e)
    assert len(final_answer(get_task("stargraph", arms=5, length=2).solve(p)).split(",")) == 3


@SETTINGS
@given(seed=seeds)
def test_stargraph_letters_name_each_node_with_one_letter(seed):
    numbers, letters = get_task("stargraph"), get_task("stargraph", letters=True)
    p = numbers.problems(1, seed)[0]
    q = letters.problems(1, seed)[0]
    assert q.data == p.data  # the same graph, only written differently
    names = {u: LETTERS[u] for e in p.data["edges"] for u in e}
    assert q.prompt == re.sub(r"\d+", lambda m: names[int(m[0])], p.prompt)
    assert letters.solve(q) == re.sub(r"\d+", lambda m: names[int(m[0])], numbers.solve(p))
    path = final_answer(letters.solve(q))
    assert letters.verify(q, with_answer(letters.solve(q), path.replace(",", " , "))) == 1.0
    for wrong in (path[::-1], path[2:], ",".join(str(LETTERS.index(n)) for n in path.split(",")),
                  path + "," + path[-1], path.replace(",", "")):
        assert letters.verify(q, with_answer(letters.solve(q), wrong)) == 0.0, wrong


@SETTINGS
@given(seed=seeds)
def test_stargraph_compact_drops_the_arrows_and_nothing_else(seed):
    letters = get_task("stargraph", letters=True)
    compact = get_task("stargraph", letters=True, compact=True)
    p, q = letters.problems(1, seed)[0], compact.problems(1, seed)[0]
    assert q.data == p.data and q.prompt == p.prompt.replace(">", "")
    assert compact.solve(q) == letters.solve(p).replace(">", "")
    assert compact.verify(q, compact.solve(q)) == 1.0


@pytest.mark.parametrize("knobs", [{}, {"letters": True, "compact": True}])
def test_stargraph_diagnose_names_the_first_faulty_line(knobs):
    task = get_task("stargraph", arms=3, length=3, max_node=40, **knobs)
    problem = next(p for p in task.problems(50, 0) if task.solve(p).count(" x") == 2)
    first, second, third, answer = task.solve(problem).split("\n")
    sep = "" if knobs else ">"
    nodes = first.removesuffix(" x").split(sep) if sep else list(first.removesuffix(" x"))
    not_an_edge = sep.join([*nodes[:2], nodes[1]]) + " x"  # a node followed by itself
    # the faulty-line cases end without an answer: a right answer would make them correct
    for lines, fault in [([first, second, third, answer], "correct"),
                         ([not_an_edge, second, third], "wrong edge"),
                         ([second, first, third], "arm order"),
                         ([sep.join(nodes[:-1]) + " x", second, third], "arm cut short"),
                         ([first.removesuffix(" x"), second, third], "dead-end mark"),
                         ([first, "?", third], "format"),
                         ([first, second, third, answer[:-1]], "wrong answer"),
                         ([first, second, third], "no answer")]:
        assert task.diagnose(problem, "\n".join(lines)) == fault, (lines, fault)


@SETTINGS
@given(seed=seeds)
def test_stargraph_compact_answer_writes_the_path_as_letters_in_a_row(seed):
    commas = get_task("stargraph", letters=True, compact=True)
    compact = get_task("stargraph", letters=True, compact=True, compact_answer=True)
    p = commas.problems(1, seed)[0]
    path = final_answer(commas.solve(p))
    assert compact.solve(p) == commas.solve(p).replace(path, path.replace(",", ""))
    assert compact.verify(p, with_answer(compact.solve(p), " ".join(path.split(",")))) == 1.0
    for wrong in (path.replace(",", "")[::-1], path.replace(",", "")[1:], path, ""):
        assert compact.verify(p, with_answer(compact.solve(p), wrong)) == 0.0, wrong


def test_stargraph_compact_needs_letters():
    with pytest.raises(ValueError, match="compact=true needs letters=true"):
        get_task("stargraph", compact=True)
    with pytest.raises(ValueError, match="compact_answer=true needs compact=true"):
        get_task("stargraph", letters=True, compact_answer=True)


def test_stargraph_letters_need_few_enough_nodes():
    get_task("stargraph", arms=5, length=9, max_node=51, letters=True)
    with pytest.raises(ValueError, match="at most 52 nodes"):
        get_task("stargraph", max_node=52, letters=True)


def test_countdown_knobs_no_problem_fits_fail_loudly():
    with pytest.raises(ValueError, match="no countdown problem"):
        get_task("countdown", count=2, low=1, high=1).problems(1, 0)
