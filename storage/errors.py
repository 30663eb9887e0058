"""The storage layer's one error type: a user-facing message that names the problem and the fix.

``storage`` imports nothing of the rest of the project (docs/design.md, enforced by import-linter
in CI), so it cannot raise ``workflow_rl.errors.WorkflowRLError``; the command line catches this
type next to that one and prints it the same way (one line, exit 1).
"""


class StorageError(Exception):
    """A database problem a user can fix (bad URL, unreachable server, newer schema, refused SQL)."""
