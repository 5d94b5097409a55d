"""The `lepton-infra` application object, its two consoles and the one place errors become a
one-line message and the documented exit code.

Exit codes: 0 ok, 1 job failed, 2 bad input, 3 infrastructure/connection failure."""

from __future__ import annotations

import errno
import sys
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from lepton_infra.display import join, plain, styled
from lepton_infra.errors import LeptonError, redact

EXIT_OK, EXIT_JOB_FAILED, EXIT_BAD_INPUT, EXIT_INFRA = 0, 1, 2, 3

# Piped output (CI logs, `| less`) gets a wide fixed width instead of rich's 80 columns, so tables
# are not cut to ellipses. No markup and no emoji codes, ever: paths, names and job output are
# data (a `[/x]` in a path must not crash rich, a `[bold]` in a log line must not restyle the
# screen); our own styling is explicit, with `Text` (lepton_infra.display).
console = Console(highlight=False, markup=False, emoji=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(
    stderr=True, highlight=False, markup=False, emoji=False, width=None if sys.stderr.isatty() else 200
)


def _error(kind: str, message: str) -> None:
    err_console.print(join(styled("error", "bold red"), f" ({kind}): ", plain(message)), soft_wrap=True)


class OneErrorHandler(TyperGroup):
    """The one place errors become a one-line message and the documented exit code (not a
    traceback), for every command and sub-command."""

    def invoke(self, ctx: Any) -> Any:  # a typer.Context; typer vendors its own click
        try:
            return super().invoke(ctx)
        except LeptonError as exc:
            kind = {
                EXIT_BAD_INPUT: "bad input",
                EXIT_INFRA: "infrastructure error",
                EXIT_JOB_FAILED: "job failed",
            }
            _error(kind.get(exc.exit_code, "error"), str(exc))
            raise typer.Exit(exc.exit_code) from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the environment's failure, not the input
                _error("infrastructure error", redact(f"no space left on device: {exc.filename or exc}"))
                raise typer.Exit(EXIT_INFRA) from exc
            # A path the user gave that the OS refuses (under a file, not writable, too long):
            # bad input, said in one line; never a traceback that could quote file contents.
            where = f" {exc.filename!r}" if exc.filename else ""
            _error("bad input", redact(f"cannot use{where}: {exc.strerror or exc}"))
            raise typer.Exit(EXIT_BAD_INPUT) from exc
        except ValueError as exc:  # e.g. a NUL byte in a path
            _error("bad input", redact(str(exc)))
            raise typer.Exit(EXIT_BAD_INPUT) from exc


app = typer.Typer(
    name="lepton-infra",
    cls=OneErrorHandler,
    help="GPU training clusters as Pulumi components, and the SSH workload layer that runs jobs on them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def main() -> None:
    app(prog_name="lepton-infra")
