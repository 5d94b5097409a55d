"""One rehearsal node: a systemd-nspawn container booting the cached rootfs through an overlay (the
rootfs stays untouched), in its own network namespace, with a NoCloud seed holding the node's user
data exactly as rendered, and the host's Python bind-mounted read-only at the same paths (torch
comes from there: no GPU image here). `boot_machine` always halts the container and unmounts.

What differs from a cloud image is written into the overlay before boot and listed in `ImageLayer`:
names of the cloud's endpoints resolving to the rehearsal's services (hosts file), the rehearsal's
CA in the trust store, the SDKs' standard endpoint variables, and the image's torch interpreter."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lepton_infra.errors import NodeError


@dataclass(frozen=True)
class ImageLayer:
    """The rehearsal's stand-in for what a cloud image brings: `hosts` (name -> address),
    `ca_pem` (trusted in addition to Debian's CAs), `environment` (for every service and login:
    /etc/environment and systemd's DefaultEnvironment), `files` (path -> text, e.g. /etc/pip.conf),
    `binds` (host paths mounted read-only at the same path), and `hook(root)` for the rest (the
    image's torch interpreter)."""

    hosts: dict[str, str] = field(default_factory=dict)
    ca_pem: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    binds: tuple[str, ...] = ()
    hook: Callable[[Path], None] | None = None


@dataclass
class Machine:
    """A booted node: its name, address, console log, and the nspawn process running it."""

    name: str
    address: str
    console: Path
    root: Path
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def start(self) -> None:
        """Boot (again): the same root, so a second start is the node's next boot, as after a
        stop/start or deallocate/start on a cloud (cloud-init sees the same instance)."""
        if self.process is not None:
            _halt(self.process)
        with open(self.console, "ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.monotonic()

    def leader(self) -> int:
        """PID of the container's init (nspawn's child), for `run`."""
        assert self.process is not None
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            children = (task / "children").read_text().split()
            if children:
                return int(children[0])
        raise NodeError(self.name, "the container has no init process (did it halt?)")

    def run(self, command: str, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`command` (sh) as root inside the container, in all its namespaces."""
        argv = [
            "nsenter",
            "-t",
            str(self.leader()),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "-r",
            "-w",
            "/bin/sh",
            "-c",
            command,
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _prepare(root: Path, name: str, user_data: str, layer: ImageLayer) -> None:
    """Seed cloud-init and apply the image layer inside the (overlay-mounted) root."""
    seed = root / "var/lib/cloud/seed/nocloud"
    _write(seed / "meta-data", f"instance-id: {name}-{int(time.time())}\nlocal-hostname: {name}\n", 0o600)
    _write(seed / "user-data", user_data, 0o600)
    _write(root / "etc/cloud/cloud.cfg.d/90-rehearsal.cfg", "datasource_list: [ NoCloud, None ]\n")
    hosts = root / "etc/hosts"
    extra = "".join(f"{addr} {host}\n" for host, addr in layer.hosts.items())
    base = hosts.read_text() if hosts.exists() else f"127.0.0.1 localhost\n127.0.1.1 {name}\n"
    hosts.write_text(base + "# lepton rehearsal: the cloud's endpoints\n" + extra)
    # No DNS server is reachable from the rehearsal network: lookups fail at once instead of waiting
    # for the host's resolver (c10d's reverse lookups of peers would stall the rendezvous).
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    _write(
        resolv,
        "# lepton rehearsal: no DNS here; names are in /etc/hosts\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    if layer.ca_pem:
        bundle = root / "etc/ssl/certs/ca-certificates.crt"
        bundle.write_text(bundle.read_text() + layer.ca_pem)
    env_lines = "".join(f"{k}={v}\n" for k, v in layer.environment.items())
    _write(root / "etc/environment", env_lines)
    quoted = " ".join(f'"{k}={v}"' for k, v in layer.environment.items())
    _write(root / "etc/systemd/system.conf.d/90-rehearsal.conf", f"[Manager]\nDefaultEnvironment={quoted}\n")
    for path, text in layer.files.items():
        _write(root / path.lstrip("/"), text)
    if layer.hook is not None:
        layer.hook(root)
    # The host interpreter lives under /root (pyenv): the login user must be able to pass through.
    (root / "root").chmod(0o711)


def _halt(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM halts the container cleanly (systemd shuts down); SIGKILL if it does not in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@contextmanager
def boot_machine(
    *, name: str, rootfs: Path, workdir: Path, netns: str, address: str, user_data: str, layer: ImageLayer
) -> Iterator[Machine]:
    """Boot one node; on exit halt it, unmount its overlay and keep only its console log."""
    upper, work, root = workdir / "upper", workdir / "work", workdir / "root"
    for d in (upper, work, root):
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={rootfs},upperdir={upper},workdir={work}"
    done = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(root)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise NodeError(name, f"overlay mount failed: {done.stderr.strip()}")
    machine = None
    try:
        _prepare(root, name, user_data, layer)
        console = workdir / "console.log"
        argv = [
            "systemd-nspawn",
            "--register=no",
            "--keep-unit",
            "--quiet",
            "--resolv-conf=off",
            "-D",
            str(root),
            "-b",
        ]
        argv += [f"--machine={name}", f"--hostname={name}", f"--network-namespace-path=/run/netns/{netns}"]
        argv += [f"--bind-ro={path}" for path in layer.binds]
        console.write_bytes(b"")
        machine = Machine(name, address, console, root, argv)
        machine.start()
        yield machine
    finally:
        if machine is not None and machine.process is not None:
            _halt(machine.process)
        if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)
        subprocess.run(["rm", "-rf", str(upper), str(work)], capture_output=True)
