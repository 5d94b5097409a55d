"""Node-side: keep the wheels the controller brings in a content-checked cache and install the data
plane's clients from it, with no package index (a private node's network has none).

Sent as `python -c SOURCE VERB` (nothing of lepton_infra is on a node). Standard library only.

    ~/.lepton/wheels/<wheel file name>     one verified wheel per name, kept for the next install

`missing` (JSON `{"files": {name: sha256}}` on stdin) answers which of them the cache lacks or holds
with other content. `install SPEC` (SPEC: JSON `{"files", "pins", "pip"}`; a tar stream of the
missing wheels on stdin) verifies each arriving wheel's sha256 before it enters the cache, then runs
pip from its own shipped wheel (the interpreter needs no pip of its own):
`pip install --no-index --find-links <cache> PINS`, and answers what the interpreter then has.
Where the interpreter's site-packages is not writable by the login user (an image's venv owned by
root), pip runs through `sudo -n`; without that, into the user's site (`--user`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from typing import IO, Any

PIP_TIMEOUT_S = 900.0


def cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".lepton", "wheels")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_name(name: str) -> str:
    if not name.endswith(".whl") or "/" in name or name.startswith("."):
        raise ValueError(f"not a wheel file name: {name!r}")
    return name


def missing(files: dict[str, str]) -> list[str]:
    """The wheels of `files` the cache lacks, or holds with content other than their sha256."""
    out = []
    for name, digest in files.items():
        path = os.path.join(cache_dir(), _check_name(name))
        if not os.path.isfile(path) or _sha256(path) != digest:
            out.append(name)
    return out


def receive(files: dict[str, str], stream: IO[bytes]) -> None:
    """Take the tar stream's wheels into the cache, each only once its hash matched."""
    os.makedirs(cache_dir(), exist_ok=True)
    incoming = tempfile.mkdtemp(prefix=".incoming-", dir=cache_dir())
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = member.name
                source = tar.extractfile(member) if member.isfile() else None
                if source is None or name not in files:
                    continue
                tmp = os.path.join(incoming, _check_name(name))
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                if _sha256(tmp) != files[name]:
                    raise ValueError(f"{name} arrived with another sha256 than the controller sent")
                os.replace(tmp, os.path.join(cache_dir(), name))
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


def _has(pins: list[str]) -> list[str]:
    """The pins this interpreter lacks (asked afresh: a new process sees what pip just wrote)."""
    probe = (
        "import sys\nfrom importlib import metadata\n"
        "def has(p):\n    n, _, v = p.partition('==')\n"
        "    try:\n        return metadata.version(n) == v\n"
        "    except metadata.PackageNotFoundError:\n        return False\n"
        "print('\\n'.join(p for p in sys.argv[1:] if not has(p)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, *pins], capture_output=True, text=True, check=False)
    return [line for line in done.stdout.splitlines() if line.strip()]


def _runner() -> tuple[list[str], list[str]]:
    """(command prefix, extra pip options) that can write to this interpreter's site-packages."""
    if os.access(sysconfig.get_paths()["purelib"], os.W_OK):
        return [], []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n", "--preserve-env=PIP_BREAK_SYSTEM_PACKAGES,PIP_NO_INDEX"], []
    return [], ["--user"]


def install(spec: dict[str, Any], stream: IO[bytes]) -> dict[str, Any]:
    files: dict[str, str] = spec["files"]
    pins: list[str] = spec["pins"]
    receive(files, stream)
    lacking = missing(files)
    if lacking:
        return {"error": f"wheels missing or altered after the transfer: {', '.join(lacking)}"}
    pip = os.path.join(cache_dir(), _check_name(spec["pip"]), "pip")
    prefix, options = _runner()
    env = {**os.environ, "PIP_BREAK_SYSTEM_PACKAGES": "1", "PIP_NO_INDEX": "1"}
    command = [*prefix, sys.executable, pip, "install", "--no-index", "--find-links", cache_dir()]
    command += ["--disable-pip-version-check", "--no-cache-dir", "--quiet", *options, *pins]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"pip install did not finish within {PIP_TIMEOUT_S:.0f} s"}
    still = _has(pins)
    if done.returncode != 0 or still:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-6:])
        return {
            "error": f"pip install --no-index of {' '.join(pins)} failed (exit {done.returncode}): {tail}"
        }
    return {"installed": pins, "python": sys.executable, "sudo": bool(prefix), "user": bool(options)}


def main(argv: list[str]) -> int:
    verb = argv[1] if len(argv) > 1 else ""
    if verb == "missing":
        print(json.dumps({"missing": missing(json.loads(sys.stdin.read())["files"])}))
        return 0
    if verb == "install" and len(argv) == 3:
        try:
            answer = install(json.loads(argv[2]), sys.stdin.buffer)
        except (OSError, ValueError, tarfile.TarError) as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer))
        return 0
    print(
        f"usage: wheels missing < files.json | wheels install SPEC < wheels.tar (got {argv[1:]})",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
