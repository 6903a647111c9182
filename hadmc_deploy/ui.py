"""Terminal output: logs and progress bars on stderr, results on stdout.

A `UI` is passed to long-running functions instead of a global quiet flag, so
library callers and tests can silence or capture it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


@dataclass
class UI:
    quiet: bool = False
    debug: bool = False
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))
    out: Console = field(default_factory=lambda: Console(file=sys.stdout, highlight=False))
    #: warnings already shown: a build traces its model again in later stages, and the same note
    #: about an operation the channel graph does not understand printed five times
    warned: set[str] = field(default_factory=set)
    #: no warnings either: for internal repeats of work whose warnings were shown when it first ran
    silent: bool = False

    def log(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message)

    def step(self, message: str) -> None:
        """Progress through a pipeline's steps: shown to a person at a terminal only, so that a
        failure in a script or CI log reads as one line (the report lists every step anyway)."""
        if not self.quiet and self.err.is_terminal:
            self.err.print(message)

    def warn(self, message: str) -> None:
        """Warnings print even with --quiet: they change what the user should trust. Once each."""
        if self.silent or message in self.warned:
            return
        self.warned.add(message)
        self.err.print(f"[yellow]warning:[/yellow] {message}")

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Any]:
        """A rich progress bar; yields an object with `advance(n=1)` and `update(**fields)`."""
        if self.quiet:
            yield _NullTask()
            return
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.err, transient=False) as bar:
            task_id = bar.add_task(description, total=total, info="")
            yield _Task(bar, task_id)

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        with self.progress(description, total) as task:
            for item in items:
                yield item
                task.advance()


class _Task:
    def __init__(self, bar: Progress, task_id: Any) -> None:
        self._bar = bar
        self._id = task_id

    def advance(self, n: float = 1) -> None:
        self._bar.advance(self._id, n)

    def update(self, info: str = "", **kwargs: Any) -> None:
        self._bar.update(self._id, info=info, **kwargs)


class _NullTask:
    def advance(self, n: float = 1) -> None:
        pass

    def update(self, info: str = "", **kwargs: Any) -> None:
        pass


def quiet_ui() -> UI:
    return UI(quiet=True)


def silent_ui() -> UI:
    """Nothing printed, warnings included: rebuilding a pruned model traces its original again, and
    each stage that loaded the checkpoint printed the trace's warnings once more (a model with a
    PixelShuffle showed the same warning four times in one build)."""
    return UI(quiet=True, silent=True)
