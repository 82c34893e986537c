"""Exceptions with one-line, user-facing messages, and the documented exit codes of every command.

Exit codes (``raxnet.cli_common.run_cli`` maps the exceptions to them):

* ``0`` -- everything asked for was done;
* ``1`` (:data:`EXIT_SOME_FAILED`) -- the command finished, but some inputs (subjects, scans) failed; they
  are listed in the stage's ``errors.csv`` (or at the end of ``raxnet predict``);
* ``2`` (:data:`EXIT_BAD_INPUT`) -- bad input or usage: a corrupt or missing file, an unknown or mistyped
  setting, an earlier stage's output that is missing, changed or out of date (:class:`RaxnetError`);
* ``3`` (:data:`EXIT_IO`) -- an I/O failure of the machine: an output folder that cannot be written
  (read-only, not a folder, no permission), a full disk (:class:`OutputError`, unhandled ``OSError``).
"""

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_IO = 3


class RaxnetError(Exception):
    """Base class: the message is printed as one line (per problem) and the CLI exits 2."""

    exit_code = EXIT_BAD_INPUT

    def lines(self) -> list[str]:
        """The message as the lines the CLI prints, one ``error:`` line each."""
        return [line for line in str(self).splitlines() if line.strip()] or [type(self).__name__]


class InputError(RaxnetError):
    """Bad input data (missing/corrupt file, wrong shape or grid, NaN, non-binary mask...).

    The message always names the offending file.
    """


class ConfigError(RaxnetError):
    """Bad configuration file or option; several problems are reported one per line."""

    def __init__(self, message: str | list[str]) -> None:
        problems = [message] if isinstance(message, str) else list(message)
        super().__init__("\n".join(problems))
        self.problems = problems


class StageInputError(RaxnetError):
    """An earlier stage's output that this stage needs is missing, malformed, changed or out of date."""


class OutputError(RaxnetError):
    """An output could not be written (full disk, read-only or missing folder...): exit code 3."""

    exit_code = EXIT_IO
