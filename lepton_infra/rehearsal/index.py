"""The package index of the rehearsal (a node here has no internet): the wheels a cloud's first boot
installs (`node_clients.packages`), downloaded once on this machine with pip and cached under the
state folder, served as a page of links that the node's /etc/pip.conf names (pip's own
configuration, the way an image points at a private mirror). And the image's torch interpreter as a
cloud image has it: an environment with torch and its requirements (linked from the host's
environment) but without the data plane's clients, so first boot really installs them."""

from __future__ import annotations

import fcntl
import hashlib
import html
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from lepton_infra.components import node_clients
from lepton_infra.errors import ConfigError
from lepton_infra.rehearsal.serve import Handler, Request, Response, reply


def wheels(state_dir: Path, cloud: str) -> Path:
    """The folder of wheels for `cloud`'s pinned clients and their requirements (pip download)."""
    pins = node_clients.packages(cloud)
    folder = (
        state_dir
        / "rehearsal"
        / "wheels"
        / f"{cloud}-{hashlib.sha256(' '.join(pins).encode()).hexdigest()[:10]}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / "download.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".complete").exists():
            argv = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                    "--only-binary=:all:", "--dest", str(folder), *pins]  # fmt: skip
            done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
            if done.returncode != 0:
                raise ConfigError(f"downloading the {cloud} nodes' wheels failed: {done.stderr[-2000:]}")
            (folder / ".complete").touch()
    return folder


def serve_folder(folder: Path) -> Handler:
    """GET / lists the wheels as links (pip's find-links page); GET /<wheel> sends one."""

    def handle(req: Request) -> Response:
        name = req.path.split("?")[0].strip("/")
        if not name:
            links = "".join(
                f'<a href="/{html.escape(p.name)}">{html.escape(p.name)}</a>\n'
                for p in sorted(folder.glob("*.whl"))
            )
            return reply(200, f"<html><body>\n{links}</body></html>\n", "text/html")
        path = folder / name
        if "/" in name or not path.is_file():
            return reply(404, "not found", "text/plain")
        return reply(200, path.read_bytes(), "application/octet-stream")

    return handle


def pip_conf(url: str) -> str:
    """/etc/pip.conf for a node that installs only from the rehearsal's wheels."""
    return (
        f"[global]\nno-index = true\nfind-links = {url}\ntrusted-host = {url.split('/')[2].split(':')[0]}\n"
    )


def _requirements(name: str, seen: set[str]) -> None:
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        return
    seen.add(key)
    for requirement in metadata.distribution(name).requires or []:
        if "extra ==" not in requirement:
            _requirements(re.split(r"[ <>=!~;\[(]", requirement, maxsplit=1)[0], seen)


def torch_environment(root: Path, path: str, base_prefix: Path) -> None:
    """An environment at `path` inside `root` (no pip, as `venv --without-pip` makes it) that sees
    torch, numpy and their requirements from this process's environment, and nothing else."""
    target = root / path.lstrip("/")
    python = base_prefix / "bin" / "python3"
    subprocess.run([str(python), "-m", "venv", "--without-pip", str(target)], check=True, capture_output=True)
    # The venv was made at its path inside `root`: its config and links name the node's paths.
    config = target / "pyvenv.cfg"
    config.write_text(config.read_text().replace(str(target), path))
    site = target / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    wanted: set[str] = set()
    for name in ("torch", "numpy"):
        _requirements(name, wanted)
    for name in sorted(wanted):
        dist = metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(str(dist.locate_file(top))).resolve()  # the bind-mounted real path
            if source.exists() and not (site / top).exists() and top != "__pycache__":
                (site / top).symlink_to(source)
