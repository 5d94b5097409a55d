"""The bootstrap keeps itself on the node: the first `prepare` of a version arrives inline (as a
bundle, `python -c`, see lepton_infra/node/loader.py) and writes its modules as the package
~/.lepton/bin/<name>/, so later commands import it from there (bytecode cached, nothing sent or
compiled) instead of compiling it from the command line. <name> carries the digest of all its
modules, so a changed bootstrap is a new package and an old one is never run by mistake."""

from __future__ import annotations

import contextlib
import os
import re

from .cache import lepton_home
from .files import rmtree

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_NAME = re.compile(r"^lepton_bootstrap_[0-9a-f]{16}$")


def install_self(asked: Any) -> None:
    """Install this package when the controller asked for exactly this version (`asked` is
    `{"name": <package>}`) and it runs from a bundle (its sources in memory); best effort, and
    atomic: the package directory appears whole (a rename) or not at all."""
    package = __package__ or ""
    sources = getattr(globals().get("__loader__"), "sources", None)  # the bundle's loader holds them
    if not isinstance(asked, dict) or asked.get("name") != package or not _NAME.match(package):
        return
    if not isinstance(sources, dict):
        return  # imported from files (lepton_infra itself, or already installed)
    target = os.path.join(lepton_home(), "bin", package)
    if os.path.isdir(target):
        return
    tmp = os.path.join(lepton_home(), "bin", f".{package}.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(OSError):
            os.makedirs(tmp)
            for name, text in sources.items():
                with open(os.path.join(tmp, f"{name}.py"), "w", encoding="utf-8") as f:
                    f.write(text)
            os.rename(tmp, target)  # another command may have won the race: then keep its copy
    finally:
        if os.path.lexists(tmp):
            rmtree(tmp)
