"""The project's user-facing error types, caught at the CLI edge and printed as one line (exit 1)."""

from storage.errors import StorageError


class WorkflowRLError(Exception):
    """A user-facing error: the message names the problem and the fix; no traceback is shown."""


USER_ERRORS: tuple[type[Exception], ...] = (WorkflowRLError, StorageError)
"""Every error a user can fix: ``storage`` raises its own type, since it imports nothing of ours."""
