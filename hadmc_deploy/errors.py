"""One family of user-facing errors.

Every problem a user can fix (a bad path, a wrong option, a model that does not
match its architecture) raises a `HadmcError` subclass. The CLI turns it into a
single line on stderr and the subclass's exit code; tracebacks appear only with
`--debug`. Library code never calls `sys.exit`.
"""

from __future__ import annotations


class HadmcError(Exception):
    """Base class: a one-line message that says what is wrong and how to fix it."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")

    def one_line(self) -> str:
        text = self.message if self.hint is None else f"{self.message}: {self.hint}"
        return " ".join(text.split())


class UsageError(HadmcError):
    """Options that contradict each other or are out of range."""

    exit_code = 2


class ModelFileNotFoundError(HadmcError):
    exit_code = 3


class ModelFileCorruptError(HadmcError):
    exit_code = 4


class UntrustedPickleError(HadmcError):
    """The file is a pickle that needs code to load and --trust-model was not given."""

    exit_code = 5


class StateDictMismatchError(HadmcError):
    exit_code = 6


class ArchSpecError(HadmcError):
    """--arch cannot be imported or called, or is missing where needed."""

    exit_code = 7


class DataError(HadmcError):
    """A data source is missing, empty, unreadable or of the wrong shape."""

    exit_code = 8


class GraphError(HadmcError):
    """The model cannot be traced, or nothing in it can be pruned."""

    exit_code = 9


class LatencyModelError(HadmcError):
    """A LUT is corrupt, empty, or made for another device."""

    exit_code = 10


class ExportError(HadmcError):
    exit_code = 11


class VerificationError(HadmcError):
    """An exported or rewritten graph disagrees numerically with its source."""

    exit_code = 12


class BackendUnavailableError(HadmcError):
    exit_code = 13


class BudgetError(HadmcError):
    """A latency budget that cannot be met (predicted within the width floors, or measured)."""

    exit_code = 14

    def __init__(self, message: str, *, hint: str | None = None, best_speedup: float | None = None) -> None:
        super().__init__(message, hint=hint)
        #: the best speedup reachable (predicted) or reached (measured), for callers that retry.
        self.best_speedup = best_speedup


class AccuracyGuardError(HadmcError):
    """The final artifact lost more accuracy than --max-accuracy-drop allows."""

    exit_code = 15


class TrainingDivergedError(HadmcError):
    exit_code = 16


class ArtifactError(HadmcError):
    """An artifact directory is missing, incomplete, or built for another device."""

    exit_code = 17

