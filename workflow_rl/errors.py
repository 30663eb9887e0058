"""The one project error type, caught at the CLI edge and printed as one line (exit 1)."""


class WorkflowRLError(Exception):
    """A user-facing error: the message names the problem and the fix; no traceback is shown."""
