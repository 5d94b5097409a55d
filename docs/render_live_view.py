"""Render README's screenshot of the live view from a real, finished run's collected files.

    .venv/bin/python docs/render_live_view.py runs/<run-id> docs/live-view.png [--at 0.7]

The run's own records are replayed through the real `LiveView` into a recording rich console, as
they stood at a moment of the run (`--at`: share of the run's time): the log lines the nodes had
printed by then, the progress bar and the per-node lines (each node's newest metrics sample
then), and the cost so far. The console's styled text is drawn with matplotlib (no SVG converter
needed), so the PNG shows what a terminal showed, colours included."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console, Group  # noqa: E402

from lepton_infra.display import LiveView  # noqa: E402
from lepton_infra.inventory import Price  # noqa: E402
from lepton_infra.workload import jobspec  # noqa: E402
from lepton_infra.workload.metrics import read_samples  # noqa: E402

WIDTH = 118


def replay(run_dir: Path, share: float) -> Console:
    record = json.loads((run_dir / "run.json").read_text())
    created = dt.datetime.fromisoformat(record["created"]).timestamp()
    nodes = [n["name"] for n in record["nodes"]]
    samples = {n: read_samples(run_dir / n / "logs" / "metrics.jsonl") for n in nodes}
    end = max(s[-1]["t"] for s in samples.values() if s)
    start = min(s[0]["t"] for s in samples.values() if s)
    moment = start + share * (end - start)
    console = Console(
        record=True, width=WIDTH, force_terminal=False, color_system="truecolor", file=io.StringIO()
    )
    c = record.get("cost") or {}
    price = Price(usd_per_node_hour=c["usd_per_node_hour"], market=c["market"]) if c else None
    view = LiveView(console, price=price, nodes=len(nodes))
    view.board.started = time.time() - (moment - created)  # the cost as it stood at that moment
    view.on_phase("launch", f"torchrun on {len(nodes)} node(s), {record['nproc_per_node']} process(es) each")
    view.on_phase("running", f"run {record['run_id']} started; streaming logs")
    for node in nodes:
        for line in (run_dir / node / "logs" / "node.log").read_text(errors="replace").splitlines():
            progress = jobspec.parse_progress(line)
            if progress is None:
                view.on_log(node, line)
                continue
            if float(progress.get("t", 0)) > moment:
                break
            view.on_progress(node, progress)
    for node, rows in samples.items():
        for s in rows:
            if s["t"] <= moment:
                view.board.sample(node, s)
    view.flush()
    view._stop.set()
    if view._task is not None:
        task = view.progress._tasks[view._task]
        task.start_time = view.progress.get_time() - (moment - start)
    # The live region as the terminal drew it at that moment: the bar, then one line per node.
    console.print(Group(*view.progress.get_renderables()))
    view.progress.stop()
    return console


def draw(console: Console, out: Path, last: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: list[list[Any]] = [[]]
    for seg in console._record_buffer:  # the styled segments the console printed
        parts = seg.text.split("\n")
        for i, part in enumerate(parts):
            if i:
                lines.append([])
            if part:
                lines[-1].append((part, seg.style))
    lines = [ln for ln in lines if ln] if len(lines) > 1 else lines
    lines = lines[-last:]
    char_w, line_h, size = 6.0 / 72, 13.0 / 72, 10
    fig = plt.figure(figsize=(WIDTH * char_w + 0.4, len(lines) * line_h + 0.4), facecolor="#1e1e1e")
    fig_w, fig_h = fig.get_size_inches()
    for row, parts in enumerate(lines):
        col = 0
        for text, style in parts:
            colour = "#d4d4d4"
            if style is not None and style.color is not None and not style.color.is_default:
                colour = "#{:02x}{:02x}{:02x}".format(*style.color.get_truecolor())
            fig.text(
                (0.2 + col * char_w) / fig_w,
                1 - (0.2 + (row + 1) * line_h) / fig_h,
                text,
                color=colour,
                family="DejaVu Sans Mono",
                size=size,
                weight="bold" if style is not None and style.bold else "normal",
                parse_math=False,  # a "$" of the cost is text
            )
            col += len(text)
    fig.savefig(out, dpi=110, facecolor=fig.get_facecolor())
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--at", type=float, default=0.7, help="moment of the run, as a share of its time")
    p.add_argument("--lines", type=int, default=26, help="terminal lines to show (the last ones)")
    args = p.parse_args()
    draw(replay(args.run_dir, args.at), args.out, args.lines)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
