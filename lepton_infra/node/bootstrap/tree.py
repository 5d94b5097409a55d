"""A run's tree as the manifest describes it: every path checked to stay inside the tree, parent
directories created once, links written last and only where they cannot lead outside, and one id
per exact tree (the key of its spare copy)."""

from __future__ import annotations

import hashlib
import json
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def safe_rel(rel: str) -> str:
    """`rel` normalised; ValueError for a path that would leave the tree (absolute, `..`)."""
    norm = os.path.normpath(rel)
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../") or norm == ".":
        raise ValueError(f"unsafe path in manifest: {rel!r}")
    return norm


def _safe_link(rel: str, target: str) -> str:
    """A link target must stay inside the tree: relative, its `..` only leading and no more of them
    than the link's depth (the controller writes exactly that form)."""
    parts = target.split("/")
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    rest = parts[ups:]
    depth = len(safe_rel(rel).split("/")) - 1
    if target.startswith("/") or ".." in rest or ups > depth or not target:
        raise ValueError(f"unsafe link in manifest: {rel!r} -> {target!r}")
    return target


def tree_id(manifest: dict[str, Any]) -> str:
    """One id for a tree's exact paths, contents, modes and links (not the agent)."""
    view = {"files": manifest.get("files", {}), "links": manifest.get("links", {})}
    return hashlib.sha256(json.dumps(view, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Tree:
    """Writes one tree's files under `base`, creating each parent directory once."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.dirs: set[str] = set()

    def path(self, rel: str) -> str:
        dst = os.path.join(self.base, safe_rel(rel))
        parent = os.path.dirname(dst)
        if parent not in self.dirs:
            os.makedirs(parent, exist_ok=True)
            self.dirs.add(parent)
        return dst

    def links(self, links: dict[str, str]) -> None:
        """Links last, so no file is ever written through one; none may sit below another."""
        for rel, target in sorted(links.items()):
            dst = self.path(rel)
            for i in range(len(rel.split("/")) - 1):
                ancestor = os.path.join(self.base, *rel.split("/")[: i + 1])
                if os.path.islink(ancestor):
                    raise ValueError(f"unsafe link in manifest: {rel!r} lies under link {ancestor!r}")
            os.symlink(_safe_link(rel, target), dst)


def by_digest(files: dict[str, list[Any]]) -> dict[str, list[tuple[str, int]]]:
    """The manifest's files grouped by content: every path (and mode) holding each digest."""
    out: dict[str, list[tuple[str, int]]] = {}
    for rel, (digest, mode) in sorted(files.items()):
        out.setdefault(str(digest), []).append((rel, int(mode)))
    return out


def check_manifest(manifest: dict[str, Any]) -> None:
    """ValueError for any path or link of the manifest that would leave the tree."""
    for rel in manifest.get("files", {}):
        safe_rel(rel)
    for rel, target in manifest.get("links", {}).items():
        _safe_link(rel, target)
    for rel, _mode in manifest.get("pending", []):
        safe_rel(rel)
