"""SQL storage of runs, problems, workflows, generations, evaluations, search nodes and checkpoints.

``open_db(url)`` opens and migrates a database; ``session_scope`` / ``read_session_scope`` are one
write / read-only transaction (``run_in_transaction`` retries one on deadlock/busy); ``storage.repo`` holds the repository functions (they take a Session
and never commit); ``storage.views`` documents the SQL views.
"""

from storage.engine import open_db, read_session_scope, run_in_transaction, session_scope

__all__ = ["open_db", "read_session_scope", "run_in_transaction", "session_scope"]
