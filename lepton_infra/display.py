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
