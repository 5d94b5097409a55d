"""Where shipping spends CPU, measured without trusting wall-clock time (for a loaded machine).

    .venv/bin/python bench/ship_profile.py [--upload-mb 100] [--files 2000] [--file-kb 4]

Prints three figures (bench/RESULTS.md, "Ship, issue 18"):
  upload     controller CPU, packets and their largest size for one `--upload-mb` upload over a
             pinned paramiko channel to `cat > /dev/null` on a local node, and the channel's
             send window and packet size as the node's sshd set them
  receive    CPU of the node-side `receive` of `--files` x `--file-kb` KB from memory (in-process,
             no settle), and its syscalls when `strace` is installed
  re-ship    CPU of the node-side `prepare` of that tree unchanged, settle included (it builds the
             spare tree for the next run), three times"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

from lepton_infra.workload.group import NodeGroup  # noqa: E402
from lepton_infra.workload.manifest import build_manifest  # noqa: E402
from lepton_infra.workload.remote import AGENT_DIGEST, AGENT_SOURCE  # noqa: E402
from lepton_infra.workload.ship_stream import write_stream  # noqa: E402

NODE_SIDE = """
import io, json, os, sys, time
from lepton_infra.node import bootstrap
mode, stream_path, request_path = sys.argv[1:4]
bootstrap.spares.settle = bootstrap.spares.settle if mode == "re-ship" else (lambda *a: None)
request = json.loads(open(request_path).read())
if mode == "receive":
    run = bootstrap.prepare({"run_id": "r", "blobs": {}})["run_dir"]
    c = time.process_time()
    with open(stream_path, "rb") as f:
        bootstrap.receive(run, f, settle_in_background=False)
    print("receive cpu %.3f s" % (time.process_time() - c))
else:
    first = bootstrap.prepare({**request, "run_id": "r0"})
    with open(stream_path, "rb") as f:
        bootstrap.receive(first["run_dir"], f, settle_in_background=False)
    for i in range(1, 4):
        c = time.process_time()
        bootstrap.prepare({**request, "run_id": f"r{i}"}, settle_in_background=False)
        print("unchanged prepare + settle cpu %.3f s" % (time.process_time() - c))
"""


def upload(mb: int) -> None:
    import paramiko

    sends = {"n": 0, "max": 0}
    real = paramiko.packet.Packetizer.send_message

    def counted(self: paramiko.packet.Packetizer, msg: paramiko.Message) -> None:
        sends["n"] += 1
        sends["max"] = max(sends["max"], len(msg.asbytes()))
        real(self, msg)

    chunk = bytes(1 << 20)
    with _bench.local_pool(1) as pool, NodeGroup.connect(pool.inventory, 10.0) as group:
        conn = group.members[0].conn
        paramiko.packet.Packetizer.send_message = counted
        try:
            c, t = time.process_time(), time.perf_counter()
            conn.run_upload("cat > /dev/null", lambda out: [out.write(chunk) for _ in range(mb)])
            cpu, wall = time.process_time() - c, time.perf_counter() - t
        finally:
            paramiko.packet.Packetizer.send_message = real
        channel = conn._transport().open_session()
        channel.exec_command("cat > /dev/null")
        time.sleep(0.3)  # sshd opens a session with a window of 0 and grows it once the command runs
        window, packet = channel.out_window_size, channel.out_max_packet_size
        channel.close()
    print(f"upload {mb} MB: controller cpu {cpu:.2f} s (wall {wall:.2f} s), {sends['n']} packets, "
          f"largest {sends['max']} B; the node's send window {window} B, max packet {packet} B")  # fmt: skip


def node_side(work: Path, files: int, file_kb: int) -> None:
    tree = work / "tree"
    for i in range(files):
        (tree / f"pkg{i // 100:03d}").mkdir(parents=True, exist_ok=True)
        (tree / f"pkg{i // 100:03d}" / f"mod{i:05d}.py").write_bytes(os.urandom(file_kb * 1024))
    manifest = build_manifest(tree, hash_cache_dir=None)
    blobs = {**manifest.blobs(), AGENT_DIGEST: len(AGENT_SOURCE)}
    buf = io.BytesIO()
    write_stream(manifest, blobs, AGENT_SOURCE, AGENT_DIGEST, buf)
    (work / "stream").write_bytes(buf.getvalue())
    request = {"blobs": blobs, "tree": {**manifest.node_view(), "agent": AGENT_DIGEST}}
    (work / "request.json").write_text(__import__("json").dumps(request))
    strace = shutil.which("strace")
    for mode in ("receive", "re-ship"):
        env = {**os.environ, "HOME": tempfile.mkdtemp(dir=work)}
        cmd = [sys.executable, "-c", NODE_SIDE, mode, str(work / "stream"), str(work / "request.json")]
        if strace and mode == "receive":
            cmd = [strace, "-f", "-c", "-o", str(work / "strace.txt"), *cmd]
        print(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout, end="")
        if strace and mode == "receive":
            total = (work / "strace.txt").read_text().strip().splitlines()[-1].split()
            print(f"receive syscalls (whole process, startup included): {total[3]}")


def main() -> int:
    p = _bench.parser(__doc__.splitlines()[0], nodes=1, repeat=1)
    p.add_argument("--upload-mb", type=int, default=100)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--file-kb", type=int, default=4)
    args = p.parse_args()
    _bench.check_counts(args, "upload_mb", "files", "file_kb")
    _bench.print_environment("ship profile")
    upload(args.upload_mb)
    work = _bench.scratch_dir("ship-profile")
    try:
        node_side(work, args.files, args.file_kb)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
