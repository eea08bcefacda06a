"""Domain exceptions. Library code raises these; only cli.py turns them into messages and exit codes.

Every message names the problem and, where there is one, the fix, because it is shown to the user
as it is (no traceback).
"""

from __future__ import annotations

import reprlib
import shlex

QUOTE_LIMIT = 60  # characters of a bad value a message shows

# Bounded at every level, so that quoting a huge value costs as little as quoting a small one.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 8, 12, 12
_REPR.maxstring = _REPR.maxother = QUOTE_LIMIT + 10


def quote(value: object) -> str:
    """repr(value), cut to QUOTE_LIMIT characters and "...": a message names a bad value without
    printing all of it (a value can be a 50 MB list, or an integer too long for repr)."""
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value.bit_length() > 4 * QUOTE_LIMIT
    ):
        return f"an integer of {int(value.bit_length() * 0.30103) + 1} digits"
    return cut(_REPR.repr(value))


def shell_word(value: object) -> str:
    """A path as a suggested command must hold it: pasted into a shell, "my run" or "*" is one
    argument, not two or a glob."""
    return shlex.quote(str(value))


def counted(number: int, noun: str) -> str:
    """ "1 token", "2 tokens": a count and its noun, in the plural unless the count is one."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def cut(text: str, limit: int = QUOTE_LIMIT) -> str:
    """The first `limit` characters of a text the user gave (a --set KEY=VALUE), and "..."."""
    return text if len(text) <= limit else text[:limit] + "..."


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
    """The loss or the gradient norm became NaN or infinite, or the loss grew far past an
    untrained model's (divergence.DIVERGED_LOSS_FACTOR)."""


class RankFailed(PtblmError):
    """Under torchrun, what another rank (rank 0) found and said: these ranks stop quietly."""


class Interrupted(PtblmError):
    """SIGINT, SIGTERM or SIGHUP stopped a run after it saved last.pt (exit 130, 143 or 129), or
    Ctrl-C stopped `ptblm generate` (exit 130; it saves nothing)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
