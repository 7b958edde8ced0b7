"""The load generator's progress: a bar on a terminal, a line every few seconds in a log.

tqdm draws it. It is the bench extra's (pip install 'voiceagent[bench]'), not a dependency of
the service, so it is imported only when a bar is wanted; without it ``voiceagent bench`` says
so in one line (``--quiet`` needs no bar).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TextIO

from voiceagent.app.caller import CallerError

if TYPE_CHECKING:
    from tqdm import tqdm

    from voiceagent.app.bench import BenchOptions, Figures

NON_TTY_INTERVAL_S = 5.0        # progress lines in a log: one every 5 s
BENCH_EXTRA_MISSING = "voiceagent bench needs the bench extra: pip install 'voiceagent[bench]'"


class _LogLines:
    """For a stream that is not a terminal: tqdm redraws its line with a carriage return,
    which a log file keeps as one endless line; here each redraw is a line of its own."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip("\n")
        if line.strip():
            self._stream.write(line + "\n")

    def flush(self) -> None:
        self._stream.flush()


def progress_bar(options: BenchOptions, stream: TextIO) -> tqdm[Any] | None:
    """A bar on a terminal; elsewhere (a CI log, a file) one line every few seconds."""
    if not options.progress:
        return None
    try:
        from tqdm import tqdm as bar_type
    except ImportError as err:
        raise CallerError(BENCH_EXTRA_MISSING) from err
    terminal = stream.isatty()
    return bar_type(total=options.calls, unit="call",
                    file=stream if terminal else _LogLines(stream),
                    dynamic_ncols=terminal, ascii=not terminal,
                    mininterval=0.2 if terminal else NON_TTY_INTERVAL_S,
                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} calls done [{elapsed}] "
                               "{postfix}")


def show_progress(bar: tqdm[Any], figures: Figures) -> None:
    recent = sorted(figures.recent)
    p50 = f"{recent[len(recent) // 2] * 1000:.1f} ms" if recent else "-"
    active = figures.calls_started - figures.calls_done
    bar.set_postfix_str(f"{active} active, {sum(figures.errors.values())} errors, "
                        f"{figures.turns} turns, latency p50 {p50}", refresh=False)
    bar.update(figures.calls_done - bar.n)
