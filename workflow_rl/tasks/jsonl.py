"""JSONL benchmarks from the user's own files: GSM8K, MATH, MBPP, HotpotQA, DROP and a generic task.

Every loader validates each line and reports the first bad one as
``WorkflowRLError("gsm8k.jsonl line 7: missing field 'answer'")``.

Splits. Either give one file per split (``files={"train": ..., "validation": ..., "test": ...}``;
splits without a file are empty), or one file (``path``) that is split deterministically by a
stable hash of each problem's key: ``sha256(key) % 100`` below ``100 * fractions[0]`` is train,
below ``100 * (fractions[0] + fractions[1])`` validation, the rest test (default 50/20/30). The
assignment of a problem never depends on the order or on the other lines of the file.

Formats (field names as in the public releases):

- ``gsm8k``: ``question``, ``answer`` (solution ending in ``#### <number>``); numeric scorer.
- ``math``: ``problem``, and ``solution`` (with ``\\boxed{}``) or ``answer``; math-verify scorer.
- ``mbpp``: ``text`` (or ``prompt``), ``code``, ``test_list`` (asserts), optional
  ``test_setup_code`` and ``task_id``; code scorer. The first test is public (shown, and used by
  the ``test`` operator); all tests are scored.
- ``hotpotqa``: ``question``, ``answer``, optional ``context`` (``[[title, [sentences]], ...]``
  or a string) and ``_id``/``id``; F1 scorer.
- ``drop``: ``passage`` (or ``context``), ``question``, ``answer`` (a string or a list of
  acceptable answers; a ``|``-separated string also works); F1 scorer.
- ``jsonl``: a generic task with user-chosen ``question_field``, ``answer_field`` and scorer
  (exact, numeric, f1, math, code; for code the answer field holds the test script).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from operators.base import OpContext
from workflow_rl.errors import WorkflowRLError
from workflow_rl.tasks.base import SPLITS, BenchProblem, Score
from workflow_rl.tasks.jsonl_seeds import DESCRIPTIONS, OPERATOR_SETS, SEED_WORKFLOWS
from workflow_rl.tasks.scoring import SCORERS, gsm8k_reference, last_boxed, score_code, score_text

DEFAULT_FRACTIONS = (0.5, 0.2, 0.3)
"""Default train / validation / test fractions when one file is split by key hash."""

Record = tuple[str, str, Any, dict[str, Any]]  # (key, problem text, reference, meta)
Converter = Callable[[dict[str, Any], int], Record]


class BadLine(ValueError):
    """A line failed validation; the message names the field (the loader adds file and line)."""


def _field(row: dict[str, Any], *names: str, kind: type | tuple[type, ...] = str) -> Any:
    """The first present field of ``names``, type-checked; :class:`BadLine` if none is present."""
    for name in names:
        if name in row and row[name] is not None:
            value = row[name]
            if not isinstance(value, kind):
                raise BadLine(f"field {name!r} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
            return value
    alternatives = " or ".join(repr(n) for n in names)
    raise BadLine(f"missing field {alternatives}")


def _key(row: dict[str, Any], line: int, *names: str) -> str:
    for name in names:
        if row.get(name) is not None:
            return str(row[name])
    return f"line{line}"


def _gsm8k(row: dict[str, Any], line: int) -> Record:
    question, answer = _field(row, "question"), _field(row, "answer")
    try:
        ref = gsm8k_reference(answer)
    except ValueError:
        raise BadLine("field 'answer' has no '#### <number>' final answer") from None
    return _key(row, line, "id", "key"), question, ref, {}


def _math(row: dict[str, Any], line: int) -> Record:
    problem = _field(row, "problem", "question")
    if row.get("answer") is not None:
        ref = str(row["answer"])
    else:
        ref = last_boxed(_field(row, "solution"))
        if ref is None:
            raise BadLine("field 'solution' has no \\boxed{} answer (or give an 'answer' field)")
    meta = {k: row[k] for k in ("level", "type", "subject") if k in row}
    return _key(row, line, "unique_id", "id", "key"), problem, ref, meta


def _function_def_line(code: str, name: str) -> str | None:
    match = re.search(rf"^def\s+{re.escape(name)}\s*\(.*?\)\s*(->[^:]*)?:", code, flags=re.MULTILINE | re.DOTALL)
    return match.group(0) if match else None


def _mbpp(row: dict[str, Any], line: int) -> Record:
    text = _field(row, "text", "prompt")
    code = _field(row, "code")
    tests = _field(row, "test_list", kind=list)
    if not tests or not all(isinstance(t, str) for t in tests):
        raise BadLine("field 'test_list' must be a non-empty list of assert strings")
    setup = row.get("test_setup_code") or ""
    called = re.search(r"assert\s+.*?([A-Za-z_]\w*)\s*\(", tests[0])
    defs = re.findall(r"^def\s+([A-Za-z_]\w*)", code, flags=re.MULTILINE)
    entry = next((d for d in defs if re.search(rf"\b{d}\s*\(", tests[0])), None) or (defs[-1] if defs else None)
    if entry is None:
        raise BadLine(f"field 'code' defines no function (first test calls {called.group(1) if called else '?'})")
    def_line = _function_def_line(code, entry) or f"def {entry}(*args):"
    # The statement, the function's signature and one public test, as in the usual MBPP prompt.
    problem = f'{text}\n\n{def_line}\n    """Your code should pass this test:\n    {tests[0]}\n    """\n'
    reference = "\n".join([setup, *tests]).strip()
    meta = {"entry_point": entry, "public_tests": f"{setup}\n{tests[0]}".strip(), "solution": code}
    return _key(row, line, "task_id", "id"), problem, reference, meta


def _context_text(context: Any) -> str:
    if isinstance(context, str):
        return context
    if isinstance(context, list):
        parts = []
        for item in context:
            if isinstance(item, (list, tuple)) and len(item) == 2:
                title, sentences = item
                body = "".join(sentences) if isinstance(sentences, list) else str(sentences)
                parts.append(f"{title}: {body}")
            else:
                parts.append(str(item))
        return "\n".join(parts)
    raise BadLine(f"field 'context' must be a string or a list, got {type(context).__name__}")


def _hotpotqa(row: dict[str, Any], line: int) -> Record:
    question, answer = _field(row, "question"), _field(row, "answer")
    context = _context_text(row["context"]) if row.get("context") else ""
    text = f"Context:\n{context}\n\nQuestion: {question}" if context else question
    return _key(row, line, "_id", "id"), text, answer, {}


def _drop(row: dict[str, Any], line: int) -> Record:
    passage = _field(row, "passage", "context")
    question = _field(row, "question")
    answer = _field(row, "answer", "answers", "ref_text", kind=(str, list))
    answers = [a.strip() for a in answer.split("|")] if isinstance(answer, str) else [str(a) for a in answer]
    if not answers or not any(answers):
        raise BadLine("field 'answer' is empty")
    return _key(row, line, "query_id", "id"), f"Passage: {passage}\n\nQuestion: {question}", answers, {}


@dataclass(frozen=True)
class JsonlFormat:
    """How to read one dataset format: converter, task type and scorer."""

    converter: Converter
    task_type: Literal["qa", "math", "code"]
    scorer: str


FORMATS: dict[str, JsonlFormat] = {
    "gsm8k": JsonlFormat(_gsm8k, "math", "numeric"),
    "math": JsonlFormat(_math, "math", "math"),
    "mbpp": JsonlFormat(_mbpp, "code", "code"),
    "hotpotqa": JsonlFormat(_hotpotqa, "qa", "f1"),
    "drop": JsonlFormat(_drop, "qa", "f1"),
}
"""Known dataset formats by benchmark name."""


def generic_format(question_field: str, answer_field: str, scorer: str, task_type: str = "qa") -> JsonlFormat:
    """A format for any JSONL file: problem text and reference from the named fields."""
    if scorer not in SCORERS:
        raise WorkflowRLError(f"unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}")
    if task_type not in OPERATOR_SETS:
        raise WorkflowRLError(f"unknown task type {task_type!r}; choose one of {', '.join(OPERATOR_SETS)}")

    def convert(row: dict[str, Any], line: int) -> Record:
        """One line of the generic format."""
        question = _field(row, question_field)
        answer = _field(row, answer_field, kind=(str, int, float, list))
        meta = {k: row[k] for k in ("entry_point", "public_tests") if isinstance(row.get(k), str)}
        return _key(row, line, "id", "key", "task_id"), question, answer, meta

    return JsonlFormat(convert, task_type, scorer)  # type: ignore[arg-type]


def read_jsonl(path: str | Path, converter: Converter) -> list[Record]:
    """All records of a JSONL file; the first bad line raises ``WorkflowRLError('<file> line N: ...')``."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise WorkflowRLError(f"{p}: file not found") from None
    except UnicodeDecodeError as exc:
        raise WorkflowRLError(f"{p}: not UTF-8 text ({exc.reason})") from None
    records, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkflowRLError(f"{p.name} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise WorkflowRLError(f"{p.name} line {number}: expected a JSON object, got {type(row).__name__}")
        try:
            record = converter(row, number)
        except BadLine as exc:
            raise WorkflowRLError(f"{p.name} line {number}: {exc}") from None
        if record[0] in seen:
            raise WorkflowRLError(f"{p.name} line {number}: duplicate key {record[0]!r}")
        seen.add(record[0])
        records.append(record)
    if not records:
        raise WorkflowRLError(f"{p}: no problems in the file")
    return records


def hash_split(key: str, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> str:
    """The split of a key: ``sha256(key) % 100`` against the cumulative fractions."""
    bucket = int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % 100
    if bucket < round(100 * fractions[0]):
        return "train"
    if bucket < round(100 * (fractions[0] + fractions[1])):
        return "validation"
    return "test"


@dataclass
class JsonlBenchmark:
    """A benchmark read from JSONL file(s) (implements :class:`workflow_rl.tasks.base.Benchmark`)."""

    name: str
    format: JsonlFormat
    path: str | None = None  # one file, split by key hash
    files: dict[str, str] = field(default_factory=dict)  # or one file per split
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    description: str = ""
    _cache: dict[str, list[BenchProblem]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if bool(self.path) == bool(self.files):
            raise WorkflowRLError(f"{self.name}: give either one file (path) or one file per split (files)")
        unknown = set(self.files) - set(SPLITS)
        if unknown:
            raise WorkflowRLError(f"{self.name}: unknown split(s) {sorted(unknown)}; use {', '.join(SPLITS)}")
        if len(self.fractions) != 3 or min(self.fractions) < 0 or abs(sum(self.fractions) - 1) > 1e-9:
            raise WorkflowRLError(f"{self.name}: split fractions {self.fractions} must be 3 numbers >= 0 summing to 1")
        self.description = self.description or DESCRIPTIONS[self.format.task_type]

    @property
    def task_type(self) -> str:
        """qa, math or code (from the format)."""
        return self.format.task_type

    @property
    def operator_names(self) -> tuple[str, ...]:
        """The operator set of the task type."""
        return OPERATOR_SETS[self.format.task_type]

    def _load(self) -> None:
        if self.path:
            records = read_jsonl(self.path, self.format.converter)
            by_split = {s: [r for r in records if hash_split(r[0], self.fractions) == s] for s in SPLITS}
        else:
            by_split = {s: read_jsonl(self.files[s], self.format.converter) if s in self.files else [] for s in SPLITS}
        for split, records in by_split.items():
            self._cache[split] = [BenchProblem(key=k, split=split, text=t, reference=r, meta=m) for k, t, r, m in records]

    def problems(self, split: str) -> list[BenchProblem]:
        """All problems of ``split`` in file order."""
        if split not in SPLITS:
            raise WorkflowRLError(f"{self.name}: unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if not self._cache:
            self._load()
        return list(self._cache[split])

    async def score(self, problem: BenchProblem, output: str | None, ctx: OpContext) -> Score:
        """Score with the format's scorer (code: run the reference tests in the sandbox)."""
        if self.format.scorer == "code":
            return await score_code(ctx, output, str(problem.reference))
        return score_text(self.format.scorer, output, problem.reference)

    def seed_workflows(self) -> dict[str, str]:
        """The seed workflows of the task type."""
        return dict(SEED_WORKFLOWS[self.format.task_type])


def load_jsonl_benchmark(
    name: str,
    path: str | None = None,
    *,
    files: dict[str, str] | None = None,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    question_field: str = "question",
    answer_field: str = "answer",
    scorer: str = "exact",
    task_type: str = "qa",
) -> JsonlBenchmark:
    """A JSONL benchmark by format name (gsm8k, math, mbpp, hotpotqa, drop, or jsonl = generic)."""
    if name == "jsonl":
        fmt = generic_format(question_field, answer_field, scorer, task_type)
    elif name in FORMATS:
        fmt = FORMATS[name]
    else:
        raise WorkflowRLError(f"unknown JSONL format {name!r}; choose one of {', '.join([*FORMATS, 'jsonl'])}")
    return JsonlBenchmark(name=name, format=fmt, path=path, files=dict(files or {}), fractions=fractions)


def _fractions(value: Any) -> tuple[float, float, float]:
    # CLI options arrive as strings such as "0.5,0.2,0.3".
    if isinstance(value, str):
        try:
            value = tuple(float(x) for x in value.split(","))
        except ValueError:
            raise WorkflowRLError(f"split fractions {value!r} must look like 0.5,0.2,0.3") from None
    return tuple(value)  # type: ignore[return-value]


def _factory(name: str) -> Callable[..., JsonlBenchmark]:
    def make(path: str | None = None, *, files: dict[str, str] | None = None,
             fractions: Any = DEFAULT_FRACTIONS, **generic: Any) -> JsonlBenchmark:
        """Build the benchmark; overwritten per format below."""
        if not path and not files:
            raise WorkflowRLError(f"benchmark {name!r} reads your JSONL file: give path=FILE.jsonl "
                                  "(or files for train/validation/test)")
        if generic and name != "jsonl":
            raise WorkflowRLError(f"benchmark {name!r} takes no option(s) {sorted(generic)}")
        return load_jsonl_benchmark(name, path, files=files, fractions=_fractions(fractions), **generic)

    make.__doc__ = f"The {name!r} JSONL benchmark from ``path`` (or per-split ``files``)."
    return make


gsm8k_benchmark = _factory("gsm8k")
math_benchmark = _factory("math")
mbpp_benchmark = _factory("mbpp")
hotpotqa_benchmark = _factory("hotpotqa")
drop_benchmark = _factory("drop")
generic_benchmark = _factory("jsonl")
