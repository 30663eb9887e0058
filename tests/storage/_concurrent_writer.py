"""A writer process for the concurrency tests (run as a script, not collected by pytest).

usage: python _concurrent_writer.py URL WORKER_ID ROLE N_TX READY_FILE GO_FILE

ROLE ``search`` writes like a search driver: many small transactions that first READ (stored
evaluation lookup) and then WRITE evaluations, a shared workflow (dedupe race) and search-node
back-ups — the read-then-write pattern that fails with "database is locked" under a deferred BEGIN.
ROLE ``train`` writes like the learner: train steps and checkpoints, and reads the leaderboard.
Every process migrates the (possibly fresh) database itself, at the same moment as the others.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from sqlalchemy import text

from storage import open_db, repo, session_scope

N_PROBLEMS = 5
SHARED_CODE = "async def solve(problem, ops):\n    return 'shared'\n"


def main() -> None:
    """Wait for the go signal, then write; exit 0 only if every transaction committed."""
    url, worker, role, n_tx = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    ready, go = Path(sys.argv[5]), Path(sys.argv[6])
    ready.touch()
    while not go.exists():
        time.sleep(0.005)
    engine = open_db(url)
    with session_scope(engine) as s:
        run = repo.get_or_create_run(s, "shared", "calc")
        pids = repo.upsert_problems(s, "calc", [{"key": f"p{i}", "split": "validation", "text": str(i),
                                                 "reference": str(i)} for i in range(N_PROBLEMS)])
        run_id = run.id
    for tx in range(n_tx):
        with session_scope(engine) as s:
            if role == "train":
                s.execute(text("SELECT count(*) FROM leaderboard")).scalar()
                ckpt = repo.add_checkpoint(s, f"/ckpt/{worker}/{tx}", "tiny", run_id=run_id, step=tx)
                repo.add_train_step(s, run_id, tx, {"loss/policy": float(tx)}, round=worker, checkpoint_id=ckpt.id)
                continue
            shared = repo.add_workflow(s, run_id, SHARED_CODE, "seed")
            own = repo.add_workflow(s, run_id, f"async def solve(problem, ops):\n    return {worker}_{tx}\n", "mutation",
                                    parent_id=shared.id)
            done = repo.stored_evaluations(s, shared.id, list(pids.values()))  # read first, then write
            rows = [{"run_id": run_id, "workflow_id": own.id, "problem_id": pid, "reward": 1.0} for pid in pids.values()]
            # Both workers send the same shared rows: exactly one copy of each must land.
            rows += [{"run_id": run_id, "workflow_id": shared.id, "problem_id": pid, "repeat": tx, "reward": 0.5}
                     for pid in pids.values() if (pid, tx) not in done]
            repo.bulk_insert_evaluations(s, rows)
            node = repo.upsert_search_node(s, run_id, shared.id)
            repo.update_search_node(s, node.id, add_visits=1, add_value=0.5)
    engine.dispose()


if __name__ == "__main__":
    main()
