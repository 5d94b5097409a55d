"""Fan-out: run one tiny command (`hostname`) on every node of a local pool, our way and the
OpenSSH-family ways, in the same run, and print the ratios.

    .venv/bin/python bench/fanout.py [--nodes 16] [--repeat 5] [--command hostname]

Approaches (all check the output: one line per node):
  lepton cold       connect_all (parallel paramiko, host keys pinned) + run + close: a fresh CLI call
  lepton warm       the same on connections already open (what a run does after connecting)
  openssh xargs     `xargs -P N ssh ...` with a generated known_hosts pinning the same keys
  openssh xargs curve25519   the same, KexAlgorithms=curve25519-sha256 (skips the costly default kex)
  openssh controlmaster      `xargs -P N ssh` over already-open ControlMaster sockets
  parallel-ssh      ParallelSSHClient (libssh2); it does NOT check host keys at all"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
from _bench import OpenSSH, Row  # noqa: E402

from lepton_infra.inventory import Inventory  # noqa: E402
from lepton_infra.local.sshd_config import KEX_ALGORITHMS  # noqa: E402
from lepton_infra.workload.ssh import NodeConnection, connect_all, parallel  # noqa: E402


def _check(outputs: list[str], nodes: int, who: str) -> None:
    lines = [line for out in outputs for line in out.splitlines() if line.strip()]
    if len(lines) != nodes:
        raise RuntimeError(
            f"{who}: expected {nodes} output lines (one per node), got {len(lines)}: {lines[:5]}"
        )


def lepton_cold(inv: Inventory, command: str) -> None:
    conns = connect_all(inv)
    try:
        outs = parallel(conns, lambda c: c.run(command).stdout.decode())
    finally:
        for c in conns:
            c.close()
    _check(outs, len(inv.nodes), "lepton cold")


def lepton_warm(conns: list[NodeConnection], command: str) -> None:
    outs = parallel(conns, lambda c: c.run(command).stdout.decode())
    _check(outs, len(conns), "lepton warm")


def openssh_xargs(ssh: OpenSSH, inv: Inventory, command: str, *extra: str) -> None:
    # `-I{}` puts the destination before the command; one ssh process per node, N at a time.
    cmd = ["xargs", "-P", str(len(inv.nodes)), "-I{}", "ssh", *ssh.options(*extra), "{}", command]
    out = _bench.run_checked(cmd, input="\n".join(ssh.destination(n) for n in inv.nodes) + "\n")
    _check([out], len(inv.nodes), "openssh xargs")


@contextlib.contextmanager
def control_masters(ssh: OpenSSH, inv: Inventory, sock_dir: Path) -> Iterator[list[str]]:
    """One persistent master per node (opened before timing, closed in finally)."""
    sock_dir.mkdir(parents=True, exist_ok=True)
    path = f"ControlPath={sock_dir}/%C"
    opened = []
    try:
        cmds = [
            ["ssh", *ssh.options("-o", "ControlMaster=yes", "-o", path, "-o", "ControlPersist=yes"),
             "-N", "-f", ssh.destination(n)]
            for n in inv.nodes
        ]  # fmt: skip
        for cmd, node in zip(cmds, inv.nodes, strict=True):
            opened.append(node)
            _bench.run_checked(cmd, timeout=60)
        yield ["-o", "ControlMaster=no", "-o", path]
    finally:
        for node in opened:
            subprocess.run(
                ["ssh", *ssh.options("-o", path), "-O", "exit", ssh.destination(node)],
                capture_output=True,
                timeout=30,
            )


def parallel_ssh_row(inv: Inventory, command: str, repeat: int) -> Row:
    row = Row("parallel-ssh (libssh2, NO host-key check)")
    try:
        from pssh.clients import ParallelSSHClient
        from pssh.config import HostConfig
    except ImportError as exc:
        row.skipped = f"parallel-ssh not importable ({exc}); `.venv/bin/pip install parallel-ssh`"
        return row
    key = inv.private_key_path
    hosts = [n.host for n in inv.nodes]
    configs = [HostConfig(port=n.port, user=inv.user, private_key=key) for n in inv.nodes]

    def once() -> None:
        client = ParallelSSHClient(hosts, host_config=configs, pool_size=len(hosts), num_retries=1)
        output = client.run_command(command, stop_on_errors=True)
        client.join(output)
        outs = ["\n".join(o.stdout) for o in output]
        bad = [(o.host, o.exit_code) for o in output if o.exit_code != 0]
        if bad:
            raise RuntimeError(f"parallel-ssh: non-zero exits {bad}")
        _check(outs, len(hosts), "parallel-ssh")

    try:
        for _ in range(repeat):
            row.seconds.append(_bench.timed(once)[0])
    except Exception as exc:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
        row.seconds.clear()
        row.skipped = f"parallel-ssh failed: {type(exc).__name__}: {exc}"
    return row


def main() -> int:
    p = _bench.parser(__doc__.splitlines()[0], nodes=16, repeat=5)
    p.add_argument("--command", default="hostname", help="remote command (default hostname)")
    args = p.parse_args()
    _bench.check_counts(args)
    _bench.print_environment(f"fanout: `{args.command}` on {args.nodes} nodes, {args.repeat} repeats")
    work = _bench.scratch_dir("fanout")
    try:
        with _bench.local_pool(args.nodes) as pool:
            inv = pool.inventory
            ssh = OpenSSH(inv, work)
            cold = Row("lepton cold (connect pinned + exec)", note="paramiko, host keys pinned")
            warm = Row("lepton warm (open connections)", note="one connection per node, reused")
            plain = Row(
                "openssh xargs -P N (client default kex)",
                # The pool's sshd offers no post-quantum kex, so this already lands on curve25519.
                note=f"server offers {KEX_ALGORITHMS[0]} first",
            )
            curve = Row("openssh xargs -P N, curve25519-sha256")
            master = Row("openssh controlmaster (persistent)", note="masters opened before timing")
            kex = ("-o", "KexAlgorithms=curve25519-sha256")
            # Warm-up: first connections pay page faults and key loading; not what we compare.
            lepton_cold(inv, args.command)
            openssh_xargs(ssh, inv, args.command)
            # Interleave the approaches per repeat so slow spells of the shared machine hit all alike.
            for _ in range(args.repeat):
                cold.seconds.append(_bench.timed(lambda: lepton_cold(inv, args.command))[0])
                plain.seconds.append(_bench.timed(lambda: openssh_xargs(ssh, inv, args.command))[0])
                curve.seconds.append(_bench.timed(lambda: openssh_xargs(ssh, inv, args.command, *kex))[0])
            conns = connect_all(inv)
            try:
                for _ in range(args.repeat):
                    warm.seconds.append(_bench.timed(lambda: lepton_warm(conns, args.command))[0])
            finally:
                for c in conns:
                    c.close()
            with control_masters(ssh, inv, work / "cm") as cm_opts:
                for _ in range(args.repeat):
                    master.seconds.append(
                        _bench.timed(lambda: openssh_xargs(ssh, inv, args.command, *cm_opts))[0]
                    )
            pssh = parallel_ssh_row(inv, args.command, args.repeat)
            rows = [cold, warm, plain, curve, master, pssh]
            _bench.print_table(f"fanout `{shlex.quote(args.command)}` to {args.nodes} nodes", rows)
            _bench.ratio("fanout", "lepton-cold/openssh", cold, plain)
            _bench.ratio("fanout", "lepton-cold/openssh-curve25519", cold, curve)
            _bench.ratio("fanout", "lepton-cold/parallel-ssh", cold, pssh)
            _bench.ratio("fanout", "lepton-warm/openssh-controlmaster", warm, master)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    _bench.finish(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
