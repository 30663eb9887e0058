"""Per-problem search samples: branches of search workflows, and the loop's exploration search."""

from __future__ import annotations

from sqlalchemy import func, select

from storage.engine import open_db, session_scope
from storage.models import Evaluation, Run, SearchNode, Workflow
from tests.workflow_rl.loop.test_loop import tiny_config
from workflow_rl.loop.driver import run_loop


def test_store_branches_keeps_provenance_and_the_limit(tmp_path):
    """Branches of a routed search workflow are stored in canonical form, source mutation, parent = the
    workflow they came from; duplicates and invalid programs are skipped; at most ``limit``."""
    from storage.repo import add_workflow, get_or_create_run
    from workflow_rl.loop.branches import store_branches
    from workflow_rl.tasks.calc import CALC_OPERATORS

    routed = """async def solve(problem, ops):
    if 'median' in problem:
        return await ops.median(await ops.extract_list(problem))
    if 'shout' in problem:
        return await ops.no_such_operator(problem)
    expression = await ops.extract_expression(problem)
    return await ops.calculate(expression)
"""
    seed = "async def solve(problem, ops):\n    text = await ops.extract_expression(problem)\n    return await ops.calculate(text)\n"
    engine = open_db(str(tmp_path / "b.db"))
    with session_scope(engine) as s:
        run = get_or_create_run(s, "b", "calc").id
        first, second = (add_workflow(s, run, code, "mutation").id for code in (routed, seed + "# the seed\n"))
    stored = store_branches(engine, run, [(first, routed), (second, seed)], CALC_OPERATORS, 0, limit=5)
    median = "async def solve(problem, ops):\n    values = await ops.extract_list(problem)\n    return await ops.median(values)\n"
    assert [code for _, code in stored] == [median, seed]
    with session_scope(engine) as s:
        rows = [s.get(Workflow, wid) for wid, _ in stored]
        assert [(w.source, w.parent_id, w.round) for w in rows] == [("mutation", first, 0), ("mutation", first, 0)]
    assert len(store_branches(engine, run, [(first, routed)], CALC_OPERATORS, 0, limit=1)) == 1


def test_explore_search_adds_its_branches_after_the_rounds_own(tmp_path):
    """``explore_budget`` runs a mutation-only search ``<loop>/r<r>/explore`` within its budget, outside
    the loop's rounds, and the canonical branches of its nodes join the round's stored branches."""
    from search.proposers.signatures import load_signatures
    from workflow_rl.policy.canonical import branch_programs, canonical
    from workflow_rl.tasks.calc import CALC_OPERATORS

    db = str(tmp_path / "e.db")
    run_loop(tiny_config(tmp_path / "runs", 1, explore_budget=120, search_branches=500, search_per_group=1,
                         batch_by_group=True), db)  # the whole path of the SmolLM2 benchmark settings
    returns = {n: s.returns for n, s in load_signatures(CALC_OPERATORS).items()}
    engine = open_db(db)
    with session_scope(engine) as s:
        explore = s.scalar(select(Run).where(Run.name == "t/r0/explore"))
        assert explore is not None and explore.parent_id is None  # not a round: the loop's curves ignore it
        assert 0 < s.scalar(select(func.count()).select_from(Evaluation).where(Evaluation.run_id == explore.id)) <= 120

        def branches(run_id):
            codes = s.scalars(select(Workflow.code).join(SearchNode, SearchNode.workflow_id == Workflow.id)
                              .where(SearchNode.run_id == run_id, Workflow.valid.is_(True))).all()
            return {canonical(b, returns) for code in codes for b in branch_programs(code)}

        r0 = s.scalar(select(Run.id).where(Run.name == "t/r0"))
        # a branch that is already a workflow of the round (one of its search nodes, a policy sample) is reused
        stored = set(s.scalars(select(Workflow.code).where(Workflow.run_id == r0)))
        own, explored = branches(r0), branches(explore.id)
        assert explored - own  # the exploration found programs the round's own search did not
        assert (own | explored) <= stored | _invalid(own | explored)


def _invalid(programs):
    from operators.validate import validation_error
    from workflow_rl.tasks.calc import CALC_OPERATORS

    return {p for p in programs if validation_error(p, CALC_OPERATORS) is not None}
