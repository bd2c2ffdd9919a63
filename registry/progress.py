"""Byte-count progress bars (rich, on stderr) for transfers worth watching."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

# Below this many bytes a transfer is over before a bar would be readable.
SHOW_BAR_FROM_BYTES = 1 << 20

Advance = Callable[[int], None]


class TransferProgress:
    """Hands out one bar per blob; a disabled instance hands out no-ops."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress

    def bar(self, description: str, total: int) -> Advance:
        """A callback that moves a new bar by the bytes it is given (a no-op for small transfers)."""
        progress = self._progress
        if progress is None or total < SHOW_BAR_FROM_BYTES:
            return lambda _count: None
        task = progress.add_task(description, total=total)
        return lambda count: progress.advance(task, count)


@contextlib.contextmanager
def transfer_progress(enabled: bool) -> Iterator[TransferProgress]:
    """Bars on stderr while the block runs, if ``enabled`` and stderr is a terminal."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:  # bars only for a person watching a terminal
        yield TransferProgress(None)
        return
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=console, transient=True,
    )
    with progress:
        yield TransferProgress(progress)
