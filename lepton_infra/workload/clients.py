"""The data plane's clients for nodes that lack them: a private node has no package index
(`privateEgress: endpoints`), and a first boot's install may have failed. The workload layer then
brings them: wheels for the node's platform (from the preflight: machine, glibc, Python), downloaded
once on the controller with `pip download --only-binary=:all: --platform ...` into its cache
(`$LEPTON_CACHE_DIR`, else `$XDG_CACHE_HOME/lepton-infra`, else `~/.cache/lepton-infra`), shipped
content-checked into the node's own wheel cache (only what it lacks), and installed there with
`pip install --no-index --find-links` (node/wheels.py).

Nothing of this runs when the preflight found every node with its clients: the hot path is one
metadata look-up per pin inside the preflight the run does anyway."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from lepton_infra.data.client_pins import PER_CLOUD, packages
from lepton_infra.errors import NodeError
from lepton_infra.inventory import Inventory
from lepton_infra.node import source as node_source
from lepton_infra.workload.group import ConnectedNode, NodeGroup
from lepton_infra.workload.remote import inline_cmd, json_answer

WHEELS_SOURCE = node_source("wheels.py")
DOWNLOAD_TIMEOUT_S = 900.0
OLDEST_GLIBC_MINOR = 17  # manylinux2014: the oldest wheels the clients publish


def pins_for(inventory: Inventory) -> tuple[str, ...]:
    """The clients a node of this inventory needs (none for the local pool: its nodes run the
    controller's own environment)."""
    return packages(inventory.cloud) if inventory.cloud in PER_CLOUD else ()


def cache_root() -> Path:
    explicit = os.environ.get("LEPTON_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lepton-infra"


@dataclass(frozen=True)
class Platform:
    """What a wheel must match to install on a node: CPython X.Y on glibc linux of one machine."""

    machine: str
    glibc: tuple[int, int]
    python: str  # "3.11"

    @classmethod
    def of(cls, node: str, found: Mapping[str, Any]) -> Platform:
        p = found.get("platform") or {}
        version = str(p.get("libc_version") or "")
        major, _, minor = version.partition(".")
        machine = str(p.get("machine") or "")
        if (
            p.get("implementation") != "cpython"
            or p.get("libc") != "glibc"
            or not (major.isdigit() and minor.isdigit())
            or machine not in ("x86_64", "aarch64")
        ):
            raise NodeError(
                node,
                f"the data plane's clients are missing and cannot be brought: wheels are made for "
                f"CPython on glibc Linux (x86_64 or aarch64), the node has {json.dumps(p)}; install "
                f"{' '.join(found.get('clients_missing', []))} into its python yourself",
            )
        return cls(machine, (int(major), int(minor)), str(p.get("python")))

    @property
    def key(self) -> str:
        return f"cp{self.python.replace('.', '')}-manylinux_{self.glibc[0]}_{self.glibc[1]}_{self.machine}"

    def pip_options(self) -> list[str]:
        """`pip download` options for exactly this platform: every manylinux level the node's glibc
        runs (pip expands none of them for a foreign platform), this Python's ABI, abi3, and pure wheels."""
        major, minor = self.glibc
        tags = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, OLDEST_GLIBC_MINOR - 1, -1)]
        tags.append(f"manylinux2014_{self.machine}")
        cp = "cp" + self.python.replace(".", "")
        options = [f"--platform={t}" for t in tags]
        return [
            *options,
            f"--python-version={self.python}",
            "--implementation=cp",
            f"--abi={cp}",
            "--abi=abi3",
            "--abi=none",
        ]


def _pip_pin() -> str:
    """pip itself travels as a wheel, so the node needs no pip of its own."""
    return f"pip=={metadata.version('pip')}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheelhouse(platform: Platform, pins: tuple[str, ...], node: str, say: Callable[[str], None]) -> Path:
    """The controller's cached folder of wheels for `pins` (and their dependencies, and pip) on
    `platform`, downloaded the first time; `wheels.json` in it lists each file's sha256."""
    wanted = sorted({*pins, _pip_pin()})
    digest = hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:16]
    house = cache_root() / "wheels" / f"{platform.key}-{digest}"
    if (house / "wheels.json").is_file():
        return house
    house.parent.mkdir(parents=True, exist_ok=True)
    say(f"downloading wheels of {' '.join(pins)} for {platform.key} into {house}")
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=house.parent))
    try:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--only-binary=:all:",
            "--disable-pip-version-check",
        ]
        command += ["--quiet", "--dest", str(tmp), *platform.pip_options(), *wanted]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise NodeError(
                node, f"downloading the clients' wheels took over {DOWNLOAD_TIMEOUT_S:.0f} s"
            ) from None
        if done.returncode != 0:
            errors = [
                line for line in done.stderr.splitlines() if "ERROR" in line
            ] or done.stderr.splitlines()
            raise NodeError(
                node,
                f"its python lacks {' '.join(pins)}, and the controller could not download their wheels "
                f"for {platform.key}: {' | '.join(errors[-3:]) or 'pip download failed'}",
            )
        files = {p.name: _sha256(p) for p in sorted(tmp.glob("*.whl"))}
        (tmp / "wheels.json").write_text(json.dumps(files, indent=1))
        try:
            tmp.rename(house)
        except OSError:  # another controller made it first: theirs is as good
            if not (house / "wheels.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return house


def lacking(found: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Per node, the pins the preflight found missing (nodes that have them all are left out)."""
    return {
        name: list(f.get("clients_missing") or []) for name, f in found.items() if f.get("clients_missing")
    }


def provide(
    group: NodeGroup,
    inventory: Inventory,
    found: Mapping[str, Mapping[str, Any]],
    say: Callable[[str], None] = lambda _: None,
) -> None:
    """Install the clients on every node of `group` (those the preflight found without them).
    NodeError naming the node when its platform has no wheels or the install fails."""
    pins = pins_for(inventory)
    houses: dict[Platform, Path] = {}
    for m in group:  # download once per platform, before any node is touched
        platform = Platform.of(m.name, found[m.name])
        if platform not in houses:
            houses[platform] = wheelhouse(platform, pins, m.name, say)
    say(
        f"installing {' '.join(pins)} on {', '.join(group.names)} from the controller (no package index needed)"
    )

    def one(m: ConnectedNode) -> dict[str, Any]:
        house = houses[Platform.of(m.name, found[m.name])]
        files: dict[str, str] = json.loads((house / "wheels.json").read_text())
        python = inventory.python
        asked = m.conn.run(
            inline_cmd(python, WHEELS_SOURCE, "missing"), stdin=json.dumps({"files": files}).encode()
        )
        need = set(json_answer(m.conn, asked.stdout, "wheels missing")["missing"])
        pip = next(name for name in files if name.startswith("pip-"))
        spec = {"files": files, "pins": list(pins), "pip": pip}

        def send(out: IO[bytes]) -> None:
            with tarfile.open(fileobj=out, mode="w|") as tar:
                for name in sorted(need):
                    tar.add(house / name, arcname=name, recursive=False)

        result, _, sent = m.conn.run_upload(
            inline_cmd(python, WHEELS_SOURCE, "install", json.dumps(spec)), send
        )
        m.bytes_shipped += sent
        answer = json_answer(m.conn, result.stdout, "wheels install")
        if answer.get("error"):
            raise NodeError(
                m.name, f"installing the data plane's clients from the controller failed: {answer['error']}"
            )
        return answer

    group.run(one).raise_first()
