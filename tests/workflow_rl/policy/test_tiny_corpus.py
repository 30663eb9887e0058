"""The tiny policy's warm-start corpus: valid, diverse, answer-free pipelines on random train problems."""

from __future__ import annotations

from operators.validate import validate_workflow
from search.proposers.signatures import load_signatures
from workflow_rl.policy.tiny_corpus import (
    multi_arg_programs,
    pipeline_programs,
    two_step_programs,
    warm_start_documents,
)
from workflow_rl.tasks.calc import CALC_OPERATORS, CalcBenchmark


def test_every_pipeline_is_a_valid_type_checked_program():
    programs = pipeline_programs(CALC_OPERATORS)
    assert len(programs) == len(set(programs)) >= 40
    for code in programs:
        validate_workflow(code, CALC_OPERATORS)
    sigs = load_signatures(CALC_OPERATORS)
    # list extractor -> list operator; str extractor -> str operator; never list -> str operator
    two = two_step_programs(sigs)
    assert any("extract_list(problem)\n    return await ops.median(values)" in c for c in two)
    assert any("extract_quoted(problem)\n    return await ops.upper(text)" in c for c in two)
    assert not any("extract_list(problem)\n    return await ops.upper" in c for c in two)
    multi = multi_arg_programs(sigs)
    # Both index orders of a two-input operator are written (which is right is the problem's business).
    assert any("convert_units(value, items[0], items[1])" in c for c in multi)
    assert any("convert_units(value, items[1], items[0])" in c for c in multi)


def test_documents_pair_random_train_problems_with_pipelines_deterministically():
    bench = CalcBenchmark()
    train = [p.text for p in bench.problems("train")]
    held_out = {p.text for split in ("validation", "test") for p in bench.problems(split)}

    def prompt_for(text: str) -> str:
        return f"P: {text}\n"

    a = warm_start_documents(prompt_for, train, CALC_OPERATORS, 120, seed=1)
    assert a == warm_start_documents(prompt_for, train, CALC_OPERATORS, 120, seed=1)
    assert a != warm_start_documents(prompt_for, train, CALC_OPERATORS, 120, seed=2)
    problems = [d.split("\n", 1)[0][3:] for d in a]
    codes = [d.split("\n", 1)[1] for d in a]
    assert set(problems) <= set(train) and not set(problems) & held_out
    # Round-robin over all pipelines: with 120 >= #pipelines documents every pipeline appears.
    assert set(codes) == set(pipeline_programs(CALC_OPERATORS))
    # Pipelines are independent of the problem: the oracle of a problem is no likelier than chance.
    oracle_hits = sum(code == bench.oracle_for(p) for p, code in
                      zip((next(q for q in bench.problems("train") if q.text == t) for t in problems), codes,
                          strict=True))
    assert oracle_hits <= 10  # chance is ~120 * 7/52 / 12 ~ 1.3
