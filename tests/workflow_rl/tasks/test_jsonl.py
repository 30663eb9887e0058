"""JSONL loaders: field validation with file/line errors, deterministic splits, scoring, seeds."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from operators.base import CodeResult, OpContext
from operators.registry import get_operators
from operators.validate import validate_workflow
from workflow_rl.errors import WorkflowRLError
from workflow_rl.tasks import get_benchmark
from workflow_rl.tasks.jsonl import hash_split, load_jsonl_benchmark


def write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def all_problems(bench):
    return [p for s in ("train", "validation", "test") for p in bench.problems(s)]


def score(bench, problem, output, ctx=None):
    return asyncio.run(bench.score(problem, output, ctx or OpContext())).reward


GSM = [{"question": f"Q{i}: 2+{i}?", "answer": f"2+{i} = <<2+{i}={2 + i}>>{2 + i}\n#### {2 + i:,}"} for i in range(40)]


def test_gsm8k_loads_splits_and_scores(tmp_path):
    bench = get_benchmark("gsm8k", path=write(tmp_path, "gsm8k.jsonl", GSM))
    problems = all_problems(bench)
    assert len(problems) == 40 and {p.split for p in problems} == {"train", "validation", "test"}
    for p in problems:
        assert p.split == hash_split(p.key)  # the split depends on the key only
    p = next(p for p in problems if p.text.startswith("Q1:"))
    assert p.reference == "3" and score(bench, p, "so the answer is 3 apples") == 1.0
    assert score(bench, p, "4") == 0.0 and score(bench, p, None) == 0.0
    assert bench.task_type == "math" and "answer_generate" in bench.operator_names


def test_first_bad_line_reported(tmp_path):
    rows = [GSM[0], GSM[1], "", {"question": "no answer"}, {"answer": "#### 1"}]
    with pytest.raises(WorkflowRLError, match=r"^gsm8k\.jsonl line 4: missing field 'answer'$"):
        load_jsonl_benchmark("gsm8k", write(tmp_path, "gsm8k.jsonl", rows)).problems("train")
    with pytest.raises(WorkflowRLError, match=r"bad\.jsonl line 2: not valid JSON"):
        load_jsonl_benchmark("gsm8k", write(tmp_path, "bad.jsonl", [GSM[0], "{oops"])).problems("train")
    with pytest.raises(WorkflowRLError, match=r"line 1: field 'answer' has no '#### <number>'"):
        load_jsonl_benchmark("gsm8k", write(tmp_path, "g.jsonl", [{"question": "q", "answer": "7"}])).problems("test")
    with pytest.raises(WorkflowRLError, match=r"line 1: field 'question' must be str, got int"):
        load_jsonl_benchmark("gsm8k", write(tmp_path, "g.jsonl", [{"question": 5, "answer": "#### 7"}])).problems("test")
    with pytest.raises(WorkflowRLError, match="line 2: duplicate key 'a'"):
        load_jsonl_benchmark("gsm8k", write(tmp_path, "g.jsonl", [{"id": "a", **GSM[0]}, {"id": "a", **GSM[1]}])).problems("test")
    with pytest.raises(WorkflowRLError, match="file not found"):
        load_jsonl_benchmark("gsm8k", str(tmp_path / "missing.jsonl")).problems("test")
    with pytest.raises(WorkflowRLError, match="give path=FILE.jsonl"):
        get_benchmark("gsm8k")


def test_separate_split_files_and_fractions(tmp_path):
    files = {"train": write(tmp_path, "tr.jsonl", GSM[:3]), "test": write(tmp_path, "te.jsonl", GSM[3:5])}
    bench = get_benchmark("gsm8k", files=files)
    assert [len(bench.problems(s)) for s in ("train", "validation", "test")] == [3, 0, 2]
    bench = get_benchmark("gsm8k", path=write(tmp_path, "g.jsonl", GSM), fractions="1,0,0")
    assert len(bench.problems("train")) == 40
    with pytest.raises(WorkflowRLError, match="summing to 1"):
        get_benchmark("gsm8k", path=write(tmp_path, "g.jsonl", GSM), fractions=(0.5, 0.5, 0.5))


def test_math_boxed_reference_and_equivalence(tmp_path):
    rows = [{"problem": "Half of 1?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 1"},
            {"problem": "x?", "answer": "\\sqrt{8}"}]
    bench = get_benchmark("math", path=write(tmp_path, "math.jsonl", rows), fractions=(0, 0, 1))
    half, root = bench.problems("test")
    assert half.reference == "\\frac{1}{2}" and half.meta == {"level": "Level 1"}
    assert score(bench, half, "\\boxed{0.5}") == 1.0 and score(bench, root, "\\boxed{2\\sqrt{2}}") == 1.0
    with pytest.raises(WorkflowRLError, match="has no \\\\boxed"):
        load_jsonl_benchmark("math", write(tmp_path, "m.jsonl", [{"problem": "p", "solution": "42"}])).problems("test")


def test_hotpotqa_and_drop_f1(tmp_path):
    hot = [{"_id": "h1", "question": "Where is the tower?", "answer": "Paris",
            "context": [["Eiffel Tower", ["The tower is ", "in Paris."]]]}]
    bench = get_benchmark("hotpotqa", path=write(tmp_path, "hotpot.jsonl", hot), fractions=(0, 0, 1))
    (p,) = bench.problems("test")
    assert "Eiffel Tower: The tower is in Paris." in p.text and p.key == "h1"
    assert score(bench, p, "paris") == 1.0 and score(bench, p, "Paris, France") == pytest.approx(2 / 3)
    drop = [{"passage": "P", "question": "How many?", "answer": "3|three"}]
    bench = get_benchmark("drop", path=write(tmp_path, "drop.jsonl", drop), fractions=(0, 0, 1))
    (p,) = bench.problems("test")
    assert p.reference == ["3", "three"] and score(bench, p, "Three") == 1.0
    assert bench.task_type == "qa"


async def subprocess_runner(source: str, *, stdin: str = "", timeout_s: float = 5.0) -> CodeResult:
    """Stand-in runner (no sandbox needed for these two trusted snippets)."""
    p = await asyncio.to_thread(subprocess.run, [sys.executable, "-I", "-c", source], capture_output=True,
                                text=True, timeout=timeout_s)
    return CodeResult(ok=p.returncode == 0, stdout=p.stdout, stderr=p.stderr)


def test_mbpp_problem_text_and_code_scoring(tmp_path):
    rows = [{"task_id": 2, "text": "Write a function to add two numbers.",
             "code": "def add_nums(a, b):\n    return a + b", "test_list": ["assert add_nums(1, 2) == 3",
                                                                            "assert add_nums(0, 0) == 0"]}]
    bench = get_benchmark("mbpp", path=write(tmp_path, "mbpp.jsonl", rows), fractions=(0, 0, 1))
    (p,) = bench.problems("test")
    assert "def add_nums(a, b):" in p.text and "assert add_nums(1, 2) == 3" in p.text
    assert p.meta["entry_point"] == "add_nums" and p.meta["public_tests"] == "assert add_nums(1, 2) == 3"
    ctx = OpContext(run_code=subprocess_runner)
    assert score(bench, p, rows[0]["code"], ctx) == 1.0
    assert score(bench, p, "def add_nums(a, b):\n    return a - b", ctx) == 0.0
    with pytest.raises(WorkflowRLError, match="line 1: missing field 'test_list'"):
        load_jsonl_benchmark("mbpp", write(tmp_path, "m.jsonl", [{"text": "t", "code": "x=1"}])).problems("test")


def test_generic_jsonl_task(tmp_path):
    rows = [{"id": "a", "q": "Capital of France?", "gold": "Paris"}]
    bench = get_benchmark("jsonl", path=write(tmp_path, "t.jsonl", rows), question_field="q",
                          answer_field="gold", scorer="exact", fractions=(0, 0, 1))
    (p,) = bench.problems("test")
    assert score(bench, p, "paris.") == 1.0
    with pytest.raises(WorkflowRLError, match="unknown scorer 'bleu'"):
        get_benchmark("jsonl", path=write(tmp_path, "t.jsonl", rows), scorer="bleu")
    with pytest.raises(WorkflowRLError, match="takes no option"):
        get_benchmark("gsm8k", path=write(tmp_path, "t.jsonl", rows), scorer="f1")


@pytest.mark.parametrize("task", ["gsm8k", "hotpotqa", "mbpp"])
def test_seed_workflows_validate_against_operator_set(tmp_path, task):
    rows = {"gsm8k": GSM[:1], "hotpotqa": [{"question": "q", "answer": "a"}],
            "mbpp": [{"text": "t", "code": "def f():\n    return 1", "test_list": ["assert f() == 1"]}]}[task]
    bench = get_benchmark(task, path=write(tmp_path, f"{task}.jsonl", rows))
    ops = get_operators(bench.operator_names)
    for code in bench.seed_workflows().values():
        validate_workflow(code, ops)
