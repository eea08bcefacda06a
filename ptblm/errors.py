"""Domain exceptions. Library code raises these; only cli.py turns them into messages and exit codes.

Every message names the problem and, where there is one, the fix, because it is shown to the user
as it is (no traceback).
"""


class PtblmError(Exception):
    """Base class: a failure at run time (exit code 1)."""

    exit_code = 1


class ConfigError(PtblmError):
    """A config file, a --set override or a command-line option is wrong (exit code 2).

    Holds every problem found, so a user fixes them all in one go.
    """

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(message)


class DataError(PtblmError):
    """The corpus is missing, corrupt, cannot be downloaded, or does not fit the vocabulary."""


class CheckpointError(PtblmError):
    """A checkpoint or run directory cannot be read, or does not belong to this data or config."""


class DivergenceError(PtblmError):
    """The loss or the gradient norm became NaN or infinite."""


class Interrupted(PtblmError):
    """SIGINT or SIGTERM stopped a run after it saved last.pt (exit 130 or 143)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
