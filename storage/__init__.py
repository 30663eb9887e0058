"""SQL storage of runs, problems, workflows, generations, evaluations, search nodes and checkpoints."""

from storage.engine import open_db, session_scope

__all__ = ["open_db", "session_scope"]
