"""The ``workflow-rl`` command line: one Typer app; each command group lives in its own module.

Every command module exposes ``register(app)``. Project errors (:data:`USER_ERRORS`) are
caught here and printed as one line on stderr with exit code 1, never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Annotated

import typer

from storage.errors import StorageError
from workflow_rl.cli.options import DB_ENV, DB_HELP, DEFAULT_DB
from workflow_rl.cli.output import quiet_libraries
from workflow_rl.errors import WorkflowRLError

__all__ = ["DEFAULT_DB", "USER_ERRORS", "app", "main"]

USER_ERRORS: tuple[type[Exception], ...] = (WorkflowRLError, StorageError)
"""Every error a user can fix, printed as one line: ``storage`` raises its own type (it imports nothing
of ours), and it is only needed here, so importing ``workflow_rl.errors`` stays free of SQLAlchemy."""

app = typer.Typer(
    name="workflow-rl",
    help="Search, store and learn agentic workflow programs (MCTS + SQL + GRPO).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Command modules, registered in this order (each defines register(app)).
COMMAND_MODULES: tuple[str, ...] = ("db", "search", "loop", "train")


@app.callback()
def _global(
    ctx: typer.Context,
    db: Annotated[
        str,
        typer.Option("--db", envvar=DB_ENV, help=DB_HELP),
    ] = DEFAULT_DB,
) -> None:
    """Search, store and learn agentic workflow programs."""
    ctx.obj = {"db": db}


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"workflow_rl.cli.{name}").register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning project errors into one line + exit 1."""
    # Before any command imports transformers, so only our own lines reach the user. Here, not in
    # the app: tests that invoke the app in-process keep their process's library settings.
    quiet_libraries()
    try:
        app(args=argv, standalone_mode=False)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        usage_errors: tuple[type[BaseException], ...] = (click.exceptions.ClickException,)
        try:  # typer >= 0.20 raises the exceptions of its vendored click copy, not click's
            from typer._click.exceptions import ClickException as TyperClickException

            usage_errors += (TyperClickException,)
        except ImportError:
            pass
        if isinstance(exc, usage_errors):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, (click.exceptions.Exit, typer.Exit)):
            sys.exit(exc.exit_code)
        if os.environ.get("WORKFLOW_RL_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set WORKFLOW_RL_DEBUG=1 for a traceback)",
              file=sys.stderr)
        sys.exit(1)
    finally:
        # A local model's server (--executor local) lives as long as the command, whatever its end.
        local = sys.modules.get("workflow_rl.llm.local_server")
        if local is not None:
            local.stop_shared_servers()
