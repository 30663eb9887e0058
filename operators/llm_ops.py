"""AFlow-equivalent LLM operators, registered in :mod:`operators.registry` with ``kind="llm"``.

Every operator is ``async fn(ctx, ...)`` and calls ``ctx.llm`` (any :class:`LLMClient`). Replies are
parsed from XML-style tags or fenced code; a malformed reply raises :class:`OperatorError` with the
raw text kept, never another exception. Each call is accounted in ``ctx.usage``.

Sampling settings come from ``ctx.extras`` (``llm_temperature``, default 0.7; ``llm_max_tokens``,
default 1024). Identical calls inside one execution get seeds 0, 1, 2, ... so that, with a response
cache, repeated calls (self-consistency) still differ while a re-run replays exactly. The seed is a
function of the request alone (its prompt, how often the execution sent that prompt before, and the
evaluation's repeat index ``llm_repeat`` from ``ctx.extras``: repeat r adds ``r * SEED_STRIDE``), never
of the workflow that sends it: two workflows that send the same requests on a problem get the same
(cached, or seed-reproduced) replies and so the same reward (common random numbers), and a second
repeat draws fresh samples instead of replaying the first.

``ctx.extras["llm_lenient"]`` (a benchmark sets it through its problems' meta) makes the parsers
forgiving for small models that ignore the reply format: ``answer_generate`` and ``format`` return the
whole reply when it has no ``<answer>`` tag, and ``sc_ensemble`` falls back to the most common
candidate when the model names no valid letter. Without it a malformed reply is an OperatorError.
"""

from __future__ import annotations

import json
from typing import Any

from operators.base import LLMRequest, OpContext, OperatorError
from operators.llm_parse import (
    extract_code,
    extract_public_tests,
    extract_tag,
    infer_entry_point,
    option_letters,
)
from operators.registration import register

DEFAULT_TEMPERATURE = 0.7
"""Executor sampling temperature when ``ctx.extras`` does not set ``llm_temperature``."""
DEFAULT_MAX_TOKENS = 1024
"""Completion budget per call when ``ctx.extras`` does not set ``llm_max_tokens``."""
SEED_STRIDE = 1000
"""Seed offset per repeat index (more than ``Limits.max_op_calls``, so seeds of repeats never overlap)."""
MAX_REPAIR_ATTEMPTS = 3
"""Upper bound on write-run-repair rounds of ``programmer`` and ``test``."""
CODE_TIMEOUT_S = 10.0
"""Wall-clock limit of one sandboxed run inside ``programmer`` / ``test``."""


# ---------------------------------------------------------------- prompt templates (str.format)

CUSTOM_PROMPT = "{instruction}\n\n{input}"

ANSWER_GENERATE_PROMPT = """Solve the following problem. Think step by step, then give the final answer.

Problem:
{input}

Reply exactly in this format:
<thought>your step-by-step reasoning</thought>
<answer>the final answer only</answer>"""

CODE_GENERATE_PROMPT = """Write a complete, self-contained Python solution for the problem below.
It must define the function `{entry_point}` (with any imports and helpers it needs) and must not read
input or print. {instruction}

Problem:
{problem}

Reply with the code in one ```python fenced block."""

SC_ENSEMBLE_PROMPT = """Several candidate solutions to the same problem are listed below, each under a letter.
Compare their final answers and pick the candidate whose answer is shared by the most candidates
(the most consistent one).

Problem:
{problem}

Candidates:
{solutions}

Reply exactly in this format:
<thought>which answers agree</thought>
<solution_letter>the single letter of the chosen candidate</solution_letter>"""

REVIEW_PROMPT = """Review the solution to the problem below critically. Decide whether it is correct and complete.

Problem:
{problem}

Solution:
{solution}

Reply exactly in this format:
<review_result>true or false</review_result>
<feedback>what is wrong and how to fix it, or why it is correct</feedback>"""

REVISE_PROMPT = """Improve the solution to the problem below so that it addresses the feedback.

Problem:
{problem}

Solution:
{solution}

Feedback:
{feedback}

Reply with the complete revised solution inside <solution></solution> tags."""

FORMAT_PROMPT = """Extract the short final answer to the problem from the solution below: only the answer
(a number, a name, a short phrase), no explanation and no units unless the question asks for them.

Problem:
{problem}

Solution:
{solution}

Reply exactly in this format:
<answer>the short final answer</answer>"""

PROGRAMMER_PROMPT = """Write a Python program that computes the answer to the problem below and prints only
the final answer. Use only the standard library; do not read input.

Problem:
{problem}

Analysis (may be empty):
{analysis}

Reply with the program in one ```python fenced block."""

PROGRAMMER_REPAIR_PROMPT = """The program below was written to solve the problem but it failed.

Problem:
{problem}

Program:
{code}

Error:
{error}

Write a corrected program that prints only the final answer, in one ```python fenced block."""

TEST_REPAIR_PROMPT = """The solution below fails its tests. Fix it.

Problem:
{problem}

Solution:
{solution}

Tests:
{tests}

Failure:
{error}

Reply with the complete corrected code defining `{entry_point}` in one ```python fenced block."""

_REPEAT_KEY = "_llm_repeat_counts"  # ctx.extras slot counting identical prompts in this execution


async def ask(ctx: OpContext, prompt: str) -> str:
    """Send one user prompt through ``ctx.llm`` and return the first choice's text (accounted)."""
    if ctx.llm is None:
        raise OperatorError("this operator needs an LLM executor (run with --executor URL#MODEL)")
    counts: dict[str, int] = ctx.extras.setdefault(_REPEAT_KEY, {})
    occurrence = counts.get(prompt, 0)
    counts[prompt] = occurrence + 1
    seed = occurrence + SEED_STRIDE * int(ctx.extras.get("llm_repeat", 0))
    request = LLMRequest(
        messages=(("user", prompt),),
        temperature=float(ctx.extras.get("llm_temperature", DEFAULT_TEMPERATURE)),
        max_tokens=int(ctx.extras.get("llm_max_tokens", DEFAULT_MAX_TOKENS)),
        seed=seed,
    )
    response = await ctx.llm.complete(request)
    ctx.usage.add(response)
    if not response.choices:
        raise OperatorError("the model returned no choices", raw="")
    return response.choices[0].text


def _answer(ctx: OpContext, reply: str) -> str:
    """The ``<answer>`` of a reply; with ``llm_lenient`` a reply without the tag is the answer whole."""
    answer = extract_tag(reply, "answer", required=not ctx.extras.get("llm_lenient"))
    return reply.strip() if answer is None else answer


def _text(name: str, value: Any) -> str:
    """A prompt argument as text; structured values (review's dict, lists) are shown as JSON."""
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, (dict, list, tuple)):
        # Generated workflows often pass review(...)'s dict straight to revise: show it, don't fail.
        return json.dumps(value, ensure_ascii=False, default=str)
    raise OperatorError(f"argument {name!r} must be a string, got {type(value).__name__}")


def _entry_point(ctx: OpContext, problem: Any, given: Any) -> str:
    """The function name to write: the argument, else the benchmark's, else the one the problem declares."""
    name = _text("entry_point", given).strip() or str(ctx.extras.get("entry_point") or "")
    name = name or (infer_entry_point(_text("problem", problem)) or "")
    if not name.isidentifier():
        raise OperatorError(f"cannot tell which function to write (entry_point={name!r}); pass entry_point")
    return name


def _need_runner(ctx: OpContext) -> None:
    if ctx.run_code is None:
        raise OperatorError("this operator needs a code runner (the sandbox was not configured)")


@register(
    "custom",
    "custom(instruction: str, input: str) -> str",
    "Generic LLM call: sends the instruction followed by the input to the model and returns its full "
    "reply text. Use it for any step that the specialised operators do not cover (analysis, "
    "decomposition, answering with a hand-written prompt).",
    kind="llm",
)
async def custom(ctx: OpContext, instruction: str, input: str = "") -> str:
    """Return the model's reply to ``instruction`` + ``input``."""
    return await ask(ctx, CUSTOM_PROMPT.format(instruction=_text("instruction", instruction), input=_text("input", input)))


@register(
    "answer_generate",
    "answer_generate(input: str) -> str",
    "Asks the model to think step by step and then give an answer; returns only the answer part "
    "(the text inside <answer> tags), so it can be fed to format, review or sc_ensemble.",
    kind="llm",
)
async def answer_generate(ctx: OpContext, input: str) -> str:
    """Return the ``<answer>`` of a thought-then-answer reply."""
    reply = await ask(ctx, ANSWER_GENERATE_PROMPT.format(input=_text("input", input)))
    return _answer(ctx, reply)


@register(
    "code_generate",
    "code_generate(problem: str, entry_point: str = '', instruction: str = '') -> str",
    "Asks the model for a complete, self-contained Python solution that defines the function named "
    "entry_point (by default the function the problem declares); returns the code, checked to parse "
    "and to define entry_point.",
    kind="llm",
)
async def code_generate(ctx: OpContext, problem: str, entry_point: str = "", instruction: str = "") -> str:
    """Return Python source defining ``entry_point``."""
    entry_point = _entry_point(ctx, problem, entry_point)
    prompt = CODE_GENERATE_PROMPT.format(problem=_text("problem", problem), entry_point=_text("entry_point", entry_point),
                                         instruction=_text("instruction", instruction))
    return extract_code(await ask(ctx, prompt), entry_point)


@register(
    "sc_ensemble",
    "sc_ensemble(solutions: list[str], problem: str) -> str",
    "Self-consistency ensemble: shows the model several candidate solutions to the same problem, asks "
    "which answer the majority agree on, and returns that candidate unchanged.",
    kind="llm",
)
async def sc_ensemble(ctx: OpContext, solutions: list[str], problem: str) -> str:
    """Return the candidate the model judges most consistent with the others."""
    if not isinstance(solutions, (list, tuple)) or not solutions:
        raise OperatorError("sc_ensemble needs a non-empty list of solutions")
    sols = [_text("solutions", s) for s in solutions]
    if len(sols) == 1:
        return sols[0]
    letters = option_letters(len(sols))
    listing = "\n\n".join(f"{letter}: {sol}" for letter, sol in zip(letters, sols, strict=True))
    reply = await ask(ctx, SC_ENSEMBLE_PROMPT.format(problem=_text("problem", problem), solutions=listing))
    lenient = bool(ctx.extras.get("llm_lenient"))
    letter = (extract_tag(reply, "solution_letter", required=not lenient) or "").strip().strip(".:()").upper()
    if letter not in letters and lenient:  # the most common candidate (the first of the tied ones)
        return max(sols, key=lambda s: (sols.count(s), -sols.index(s)))
    if letter not in letters:
        raise OperatorError(f"sc_ensemble: the model chose {letter!r}, not one of {letters}", raw=reply)
    return sols[letters.index(letter)]


@register(
    "review",
    "review(problem: str, solution: str) -> dict",
    "Asks the model to check a solution critically; returns {'passed': bool, 'feedback': str} where "
    "feedback explains what is wrong (or why it is right), ready to pass to revise.",
    kind="llm",
)
async def review(ctx: OpContext, problem: str, solution: str) -> dict[str, Any]:
    """Return ``{"passed": bool, "feedback": str}``."""
    reply = await ask(ctx, REVIEW_PROMPT.format(problem=_text("problem", problem), solution=_text("solution", solution)))
    verdict = extract_tag(reply, "review_result").strip().lower()
    if verdict not in ("true", "false", "pass", "fail", "yes", "no"):
        raise OperatorError(f"review: verdict {verdict!r} is not true/false", raw=reply)
    feedback = extract_tag(reply, "feedback", required=False) or ""
    return {"passed": verdict in ("true", "pass", "yes"), "feedback": feedback.strip()}


@register(
    "revise",
    "revise(problem: str, solution: str, feedback: str) -> str",
    "Asks the model to rewrite a solution so that it addresses the given feedback (for example the "
    "feedback of review); returns the revised solution.",
    kind="llm",
)
async def revise(ctx: OpContext, problem: str, solution: str, feedback: str) -> str:
    """Return the revised solution text."""
    prompt = REVISE_PROMPT.format(problem=_text("problem", problem), solution=_text("solution", solution),
                                  feedback=_text("feedback", feedback))
    return extract_tag(await ask(ctx, prompt), "solution").strip()


@register(
    "format",
    "format(problem: str, solution: str) -> str",
    "Extracts the short final answer from a long solution (a number, a name, a phrase) as the benchmark "
    "expects it; use it as the last step of QA and math workflows.",
    kind="llm",
)
async def format(ctx: OpContext, problem: str, solution: str) -> str:  # noqa: A001 (AFlow's name)
    """Return the short final answer."""
    reply = await ask(ctx, FORMAT_PROMPT.format(problem=_text("problem", problem), solution=_text("solution", solution)))
    return _answer(ctx, reply).strip()


@register(
    "programmer",
    "programmer(problem: str, analysis: str = '') -> str",
    "Writes a Python program that computes the answer, runs it in the sandbox, and on an error shows "
    "the error to the model and retries (at most 3 attempts); returns what the program printed.",
    kind="llm",
)
async def programmer(ctx: OpContext, problem: str, analysis: str = "") -> str:
    """Return the stdout of a model-written program, repairing it on errors."""
    _need_runner(ctx)
    prompt = PROGRAMMER_PROMPT.format(problem=_text("problem", problem), analysis=_text("analysis", analysis))
    last_error, reply = "", ""
    for _ in range(MAX_REPAIR_ATTEMPTS):
        reply = await ask(ctx, prompt)
        try:
            code = extract_code(reply)
        except OperatorError as exc:
            last_error = str(exc)
            prompt = PROGRAMMER_REPAIR_PROMPT.format(problem=problem, code=reply, error=last_error)
            continue
        result = await ctx.run_code(code, timeout_s=CODE_TIMEOUT_S)
        if result.ok and result.stdout.strip():
            return result.stdout.strip()
        last_error = (result.error_message or result.stderr or "the program printed nothing").strip()[-1500:]
        prompt = PROGRAMMER_REPAIR_PROMPT.format(problem=problem, code=code, error=last_error)
    raise OperatorError(f"programmer: no working program after {MAX_REPAIR_ATTEMPTS} attempts: {last_error[-300:]}",
                        raw=reply)  # the last reply, as every operator error of a model's reply keeps it


@register(
    "test",
    "test(problem: str, solution: str, entry_point: str = '') -> str",
    "Runs the public tests of a code problem (the examples in the problem, or the benchmark's public "
    "tests) against the solution in the sandbox; on a failure shows it to the model for a fix and "
    "re-tests (at most 3 rounds); returns the last solution (the passing one if any).",
    kind="llm",
)
async def test(ctx: OpContext, problem: str, solution: str, entry_point: str = "") -> str:
    """Return ``solution`` repaired until its public tests pass (or the last attempt)."""
    _need_runner(ctx)
    problem, solution = _text("problem", problem), _text("solution", solution)
    entry_point = _entry_point(ctx, problem, entry_point)
    tests = ctx.extras.get("public_tests") or extract_public_tests(problem, entry_point)
    if not tests:
        return solution  # nothing to test against: the solution stands as it is
    for attempt in range(MAX_REPAIR_ATTEMPTS + 1):
        result = await ctx.run_code(f"{solution}\n\n{tests}\n", timeout_s=CODE_TIMEOUT_S)
        if result.ok or attempt == MAX_REPAIR_ATTEMPTS:
            return solution
        error = (result.error_message or result.stderr or "a test failed").strip()[-1500:]
        reply = await ask(ctx, TEST_REPAIR_PROMPT.format(problem=problem, solution=solution, tests=tests,
                                                         error=error, entry_point=entry_point))
        try:
            solution = extract_code(reply, entry_point)
        except OperatorError:
            continue  # an unusable repair: re-test the previous solution, which fails again and retries
    return solution
