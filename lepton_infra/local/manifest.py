"""What a local pool's folder is: the state dir check, the manifest (`lepton-pool.json`, the files and
node dirs `up` made) and the lock that serialises `up`/`down` on one folder.

The manifest is what makes `down` safe: it touches nothing the manifest does not list, and a folder
without one is not a pool (ConfigError), so `down` pointed at the wrong folder deletes nothing."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lepton_infra.errors import ConfigError
from lepton_infra.local.sshd_config import check_config_path

DEFAULT_STATE_DIR = Path(".lepton/local")
POOL_FILE = "pool.json"
MANIFEST_FILE = "lepton-pool.json"
INVENTORY_FILE = "inventory.json"
CLIENT_KEY_FILE = "id_ed25519"
LOCK_FILE = ".lock"
# What a pool directory holds. A folder holding only these (an older lepton-infra's pool, which had
# no manifest) may be reused by `up`; any other content means the folder is someone else's.
_POOL_ENTRIES = frozenset(
    {
        MANIFEST_FILE,
        POOL_FILE,
        POOL_FILE + ".tmp",
        CLIENT_KEY_FILE,
        CLIENT_KEY_FILE + ".pub",
        "authorized_keys",
        "nodes",
        LOCK_FILE,
    }
)


def node_dir(state_dir: Path, name: str) -> Path:
    return Path(state_dir).resolve() / "nodes" / name


def node_home(state_dir: Path, name: str) -> Path:
    """The node's HOME (`~` in its remote commands): `<state-dir>/nodes/<name>/home`."""
    return node_dir(state_dir, name) / "home"


def node_dirs(state_dir: Path) -> list[Path]:
    """Every node folder under `<state-dir>/nodes/`, listed or not."""
    nodes = state_dir / "nodes"
    return sorted(p for p in nodes.iterdir() if p.is_dir()) if nodes.is_dir() else []


def check_state_dir(state_dir: Path) -> Path:
    """The absolute state dir, or ConfigError, before anything is written: a path sshd_config cannot
    hold, a file (or a file on the way), a folder we may not write, or a folder with other content
    (it may hold a cloud inventory.json that `up` would overwrite)."""
    state_dir = Path(state_dir).expanduser().absolute()
    check_config_path(state_dir)
    if state_dir.exists() and not state_dir.is_dir():
        raise ConfigError(f"--state-dir {state_dir} is a file; the local pool needs a directory there")
    existing = state_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--state-dir {state_dir}: {existing} is a file, so no directory can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--state-dir {state_dir}: {existing} is not writable by this user")
    if state_dir.is_dir() and read_manifest(state_dir) is None:
        foreign = sorted(p.name for p in state_dir.iterdir() if p.name not in _POOL_ENTRIES)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ConfigError(
                f"--state-dir {state_dir} is not empty and is not a local pool's folder (it has {shown} "
                f"and no {MANIFEST_FILE}); choose an empty or new folder"
            )
    return state_dir


def read_manifest(state_dir: Path) -> dict[str, object] | None:
    """The pool's manifest; for a pool made before manifests existed, one built from its pool.json."""
    path = state_dir / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        old = state_dir / POOL_FILE
        try:
            legacy = json.loads(old.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(legacy, dict) or legacy.get("state_dir") != str(state_dir):
            return None
        return {
            "files": [POOL_FILE, INVENTORY_FILE],
            "nodes": [n.get("name") for n in legacy.get("nodes", [])],
        }
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path}: unreadable local pool manifest ({exc}); delete the folder by hand"
        ) from exc
    if not isinstance(data, dict) or data.get("kind") != "lepton-local-pool":
        raise ConfigError(f"{path}: not a lepton-infra local pool manifest")
    return data


def write_manifest(state_dir: Path, nodes: list[str]) -> None:
    files = [
        POOL_FILE,
        INVENTORY_FILE,
        CLIENT_KEY_FILE,
        CLIENT_KEY_FILE + ".pub",
        "authorized_keys",
        LOCK_FILE,
    ]
    data = {
        "kind": "lepton-local-pool",
        "version": 1,
        "state_dir": str(state_dir),
        "files": files,
        "nodes": nodes,
    }
    tmp = state_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(state_dir / MANIFEST_FILE)


def listed_nodes(manifest: dict[str, object]) -> set[str]:
    """The node names the manifest lists (anything else in it is ignored)."""
    names = manifest.get("nodes")
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def listed_node_dirs(state_dir: Path, manifest: dict[str, object]) -> set[Path]:
    """The folders of the nodes the manifest lists that exist: the only ones `down` sweeps."""
    return {state_dir / "nodes" / n for n in listed_nodes(manifest) if (state_dir / "nodes" / n).is_dir()}


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Serialise up/down on one state dir (two `up`s at once would both see 'no pool')."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
