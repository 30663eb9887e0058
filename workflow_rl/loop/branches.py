"""Per-problem search samples for the learner: the straight-line branches of search workflows.

A routed search workflow (``if 'median' in problem: ... else ...``) is a bundle of per-problem
programs. The loop's data phase takes its branches in canonical form
(:func:`workflow_rl.policy.canonical.canonical`) and runs them on the round's train problems, so a
branch that is right on a problem can join that problem's GRPO group (``search_branches``).

The round's own search is sized for what it measures (how fast it reaches a score), and it stores
few workflows: a 400-evaluation search of 20 validation problems per expansion keeps ~20, whose
branches covered 1-4 of calc's 12 recipes. ``explore_budget`` adds a wide mutation-only search
(run ``<loop>/r<r>/explore``, run by :mod:`workflow_rl.loop.driver`, outside the round's search
curve) whose branches come after the round's own; mutations call no model, so on tool-only benchmarks it costs seconds (20,000
evaluations: ~20 s on 2 cores, 9 of calc's 12 recipes among ~140 distinct branches).
"""

from __future__ import annotations

from sqlalchemy import select

from operators.graph import graph_hash
from operators.validate import code_hash, validation_error
from search.tree import validation_scores
from storage.engine import session_scope
from storage.models import SearchNode, Workflow
from storage.repo import add_workflow


def explore_run_name(loop_run: str, round_: int) -> str:
    """Name of round ``round_``'s exploration search run."""
    return f"{loop_run}/r{round_}/explore"


def ranked_nodes(session, run_id: int) -> list[tuple[int, str]]:
    """(workflow id, code) of a search run's valid nodes, best validation score first, shortest on ties."""
    scores = validation_scores(session, run_id)
    nodes = session.execute(
        select(Workflow.id, Workflow.code).join(SearchNode, SearchNode.workflow_id == Workflow.id)
        .where(SearchNode.run_id == run_id, Workflow.valid.is_(True)).order_by(SearchNode.id)
    ).all()
    return sorted(((wid, code) for wid, code in nodes), key=lambda n: (-scores.get(n[0], 0.0), len(n[1]), n[0]))


def store_branches(engine, run_id: int, ranked, operator_names, round_: int, limit: int) -> list[tuple[int, str]]:
    """The first ``limit`` distinct valid branch programs of the ranked search workflows, stored in ``run_id``.

    ``ranked``: (workflow id, code) pairs, best first; each stored branch records the best workflow
    it came from as its parent.
    """
    from search.proposers.signatures import load_signatures
    from workflow_rl.policy.canonical import branch_programs, canonical

    returns = {name: sig.returns for name, sig in load_signatures(tuple(operator_names)).items()}

    def valid_branches():  # distinct valid programs, each with the best workflow it came from
        seen: set[str] = set()
        for wid, code in ranked:
            for program in (canonical(p, returns) for p in branch_programs(code)):
                if program in seen:  # a branch repeated in several workflows is validated once
                    continue
                seen.add(program)
                if validation_error(program, operator_names) is not None:
                    continue
                yield program, wid

    picked: dict[str, int] = {}
    for program, wid in valid_branches():
        picked[program] = wid
        if len(picked) >= limit:
            break
    out = []
    with session_scope(engine) as s:
        for program, parent in picked.items():
            wf = add_workflow(s, run_id, program, "mutation", code_hash=code_hash(program), round=round_,
                              parent_id=parent, graph_hash=graph_hash(program))
            out.append((wf.id, program))
    return out
