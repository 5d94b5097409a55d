"""Text the CLI shows that came from outside (a user, a file name, a node's log) goes out through
here: as a rich `Text`, which rich never parses for markup, so `[/x]` or `[bold]` in a path or a
job's log line is printed as written instead of crashing the controller (rich's MarkupError) or
restyling the screen; and with control characters made visible (`\\x1b`), so a job cannot move
the cursor, retitle the terminal or hide lines with escape sequences.

    console.print(line("node-0", "cyan", raw_line))       # a log line, prefixed by node
    table.add_row(plain(node.name), styled(state, "red"))  # table cells
    console.print(styled("error", "bold red"), plain(f": {exc}"))
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

# C0 controls except tab, DEL and C1 controls (ESC-free CSI \x9b included); newlines are the
# caller's business (a log line has none; a multi-line message keeps its).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(value: object) -> str:
    """`str(value)` with every control character but tab and newline shown as `\\xNN`."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def plain(value: object, style: str = "") -> Text:
    """Outside text as a `Text`: printed exactly as written (no markup), controls made visible."""
    return Text(clean(value), style=style)


def styled(value: object, style: str) -> Text:
    """The same, in one style (a state in red, a name in bold)."""
    return plain(value, style)


def line(node: str, colour: str, text: str, width: int = 8) -> Text:
    """One log line as the live view shows it: `  node-0 | text`, the prefix coloured."""
    return Text.assemble((f"{clean(node):>{width}} |", colour), " ", clean(text))


def join(*parts: Text | str) -> Text:
    """Concatenate; plain `str` parts are our own fixed words (no markup is parsed either way)."""
    out = Text()
    for part in parts:
        out.append(part if isinstance(part, Text) else Text(part))
    return out


class LiveView:
    """The live view of a run (a `RunEvents`): phases, log lines prefixed by node, one progress bar.

    Everything from outside goes through `plain`/`line` (no markup, controls visible). Log lines are
    buffered and printed in batches (one `print` per flush, from a background flusher every
    `FLUSH_S`), because rich renders line by line far slower than nodes can print: a flood is
    summarised per node past `MAX_LINES_PER_S` lines a second (every line is still in the
    collected node.log files; the summary says how many were not shown)."""

    COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red")
    FLUSH_S = 0.1
    MAX_LINES_PER_S = 200
    # Lines waiting for the flusher at most: past it they are counted as not shown right away, so
    # a flood (a million empty lines a second) cannot grow the controller's memory.
    MAX_PENDING = 10_000
    BOARD_PRINT_S = 30.0

    def __init__(self, console: Console, *, quiet: bool = False, price: Any = None, nodes: int = 0) -> None:
        from lepton_infra.node_view import BoardProgress, NodeBoard  # it draws with this module's clean()

        self.console = console
        self.quiet = quiet
        # One line per node (GPU, CPU, RAM, straggler flag) and the cost so far, under the bar.
        self.board = NodeBoard(price, nodes)
        self._board_printed = time.monotonic()
        self.progress: Progress = BoardProgress(
            self.board,
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}", markup=False),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._task: Any = None
        self._colours: dict[str, str] = {}
        self._lock = threading.Lock()
        self._pending: list[tuple[str, str]] = []
        self._budget: dict[str, float] = {}
        self._budget_at = time.monotonic()
        self._hidden: dict[str, int] = defaultdict(int)
        self._summarised: dict[str, float] = {}
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="lepton-live-view", daemon=True)
        self._flusher.start()

    def _colour(self, node: str) -> str:
        if node not in self._colours:
            self._colours[node] = self.COLOURS[len(self._colours) % len(self.COLOURS)]
        return self._colours[node]

    # ------------------------------------------------------------ RunEvents
    def on_phase(self, phase: str, detail: str) -> None:
        self.flush()
        if not self.quiet:
            self.console.print(join(styled("==>", "bold blue"), f" {phase}: ", plain(detail)), soft_wrap=True)

    def on_log(self, node: str, text: str) -> None:
        if not self.quiet:
            with self._lock:
                if len(self._pending) < self.MAX_PENDING:
                    self._pending.append((node, text))
                else:
                    self._hidden[node] += 1

    def on_progress(self, node: str, progress: dict[str, Any]) -> None:
        epochs, epoch = progress.get("epochs"), progress.get("epoch")
        steps, step = progress.get("steps"), progress.get("step")
        if not (isinstance(epochs, int) and isinstance(steps, int) and epoch and steps):
            return
        total = epochs * steps
        done = (int(epoch) - 1) * steps + int(step or 0)
        self.board.progress(node, progress)
        loss = progress.get("loss")
        detail = f"epoch {epoch}/{epochs}" + (f" loss {loss:.3f}" if isinstance(loss, int | float) else "")
        with self._lock:
            if self._task is None:
                self.progress.start()
                self._task = self.progress.add_task("training", total=total, detail=detail)
            self.progress.update(self._task, completed=min(max(done, 0), total), total=total, detail=detail)

    def on_metrics(self, node: str, sample: dict[str, Any]) -> None:
        """Node lines update in place on a terminal; piped output (CI logs) gets them as a block
        every BOARD_PRINT_S, and once more at the end."""
        with self._lock:
            self.board.sample(node, sample)
            if self.console.is_terminal and not self.progress.live.is_started:
                self.progress.start()  # the bar's task joins when the job reports progress
        if not self.console.is_terminal and time.monotonic() - self._board_printed >= self.BOARD_PRINT_S:
            self._print_board()

    def _print_board(self) -> None:
        self._board_printed = time.monotonic()
        if not self.quiet and self.board.latest:
            self.flush()
            self.console.print(self.board.render(), soft_wrap=True)

    def on_node_done(self, node: str, status: Any) -> None:
        self.flush()
        if not self.quiet:
            state = getattr(status, "state", status)
            detail = getattr(status, "detail", "") or ""
            colour = "green" if state == "succeeded" else "red"
            shown = f"{node:>8} | finished: {state}" + (
                f" ({detail})" if detail and state != "succeeded" else ""
            )
            self.console.print(plain(shown, colour), soft_wrap=True)

    def close(self) -> None:
        self._stop.set()
        self._flusher.join(timeout=2)
        self.flush(final=True)
        self.progress.stop()
        self._print_board()  # the last figures of every node stay on screen

    # ------------------------------------------------------------ batching
    def _flush_loop(self) -> None:
        while not self._stop.wait(self.FLUSH_S):
            self.flush()

    def flush(self, final: bool = False) -> None:
        """Print what is buffered as one block; past the per-node rate, count instead of print."""
        with self._lock:
            pending, self._pending = self._pending, []
            now = time.monotonic()
            # Refill each node's allowance of lines (a token bucket, one second deep).
            refill = (now - self._budget_at) * self.MAX_LINES_PER_S
            self._budget_at = now
            for node in self._budget:
                self._budget[node] = min(self.MAX_LINES_PER_S, self._budget[node] + refill)
            block = Text()
            for node, text in pending:
                budget = self._budget.setdefault(node, float(self.MAX_LINES_PER_S))
                if budget < 1:
                    self._hidden[node] += 1
                    continue
                self._budget[node] = budget - 1
                if self._hidden.get(node):
                    block.append_text(self._summary(node))
                block.append_text(line(node, self._colour(node), text))
                block.append("\n")
            # Say what was not shown at most once a second per node, and all of it at the end.
            for node in [n for n, count in self._hidden.items() if count]:
                if final or now - self._summarised.get(node, 0.0) >= 1.0:
                    self._summarised[node] = now
                    block.append_text(self._summary(node))
            if block:
                block.rstrip()
                self.console.print(block, soft_wrap=True, overflow="ignore", crop=False)

    def _summary(self, node: str) -> Text:
        count, self._hidden[node] = self._hidden[node], 0
        return Text.assemble(
            (f"{clean(node):>8} |", self._colour(node)),
            (f" ... {count} line(s) not shown (all kept in the run's {clean(node)}/logs/node.log)\n", "dim"),
        )
