"""A whole rehearsal of one cloud: render the cluster (render.py), start the cloud around it
(clouds.py: metadata, secret store, store emulator, TLS front), boot one container per node
(machine.py) on the rehearsal network (network.py), wait until each serves SSH with its pinned key,
and hand back an inventory for the booted nodes. `rehearsal(...)` is a context manager: leaving it,
also through an error or Ctrl-C, halts every container and removes every namespace, route and
server it made."""

from __future__ import annotations

import base64
import fcntl
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton_infra.errors import ConfigError, NodeError
from lepton_infra.rehearsal import clouds, index, machine, network, rootfs, serve

# Where the rehearsal image keeps the image's torch interpreter (the path the image table names, or
# one the cloud's boot steps look in): an environment seeing torch from the host's (index.py).
IMAGE_TORCH = {"aws": "/opt/pytorch", "gcp": "/opt/conda", "azure": "/opt/lepton/venv"}
SSH_TIMEOUT_S = 180.0
# One rehearsal at a time per machine: each serves 169.254.169.254:80, which only one can bind.
MACHINE_LOCK = Path("/run/lepton-rehearsal.lock")


def unavailable() -> str | None:
    """Why no rehearsal can run on this machine, or None (tests skip with this reason)."""
    return network.unavailable() or rootfs.unavailable()


def host_python() -> tuple[Path, Path]:
    """(the project's environment, its base interpreter's prefix), real paths: bound into every node."""
    return Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()


def render(cloud: str, nodes: int) -> dict[str, Any]:
    """The cluster's first-boot material, rendered in a process of its own (render.py says why)."""
    done = subprocess.run(
        [sys.executable, "-m", "lepton_infra.rehearsal.render", cloud, str(nodes)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        raise ConfigError(
            f"rendering the {cloud} cluster under Pulumi's mocks failed:\n{done.stderr[-3000:]}"
        )
    found: dict[str, Any] = json.loads(done.stdout)
    return found


@dataclass
class Rehearsal:
    """The booted cluster: its machines, the cloud's record of calls, the inventory file for them."""

    cloud: str
    material: dict[str, Any]
    services: clouds.Cloud
    net: network.RehearsalNet
    machines: list[machine.Machine] = field(default_factory=list)
    inventory_path: Path | None = None
    host_env: dict[str, str] = field(default_factory=dict)  # the store emulator, for this machine
    ssh_ready_s: list[float] = field(default_factory=list)
    logs: dict[str, list[str]] = field(default_factory=dict)
    key_path: Path | None = None

    def restart(self, k: int) -> float:
        """Stop node `k` and boot it again (its next boot, same instance); seconds until it serves
        SSH with its pinned key again."""
        assert self.key_path is not None
        m, inventory = self.machines[k], self.material["inventory"]
        m.start()
        return _wait_for_ssh(m, inventory["nodes"][k]["host_key"], self.key_path, inventory["user"])


def _emulator(cloud: str, host: str, material: dict[str, Any]) -> Any:
    """The store emulator for `cloud` on `host`, with the cluster's bucket (and AWS's secrets) in it."""
    from lepton_infra.data import emulators

    store = str(material["inventory"]["store"])
    if cloud == "aws":
        import boto3

        emu = emulators.start_moto(host)
        client = dict(
            endpoint_url=emu.env["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        manager = boto3.client("secretsmanager", **client)
        for arn, value in material["secrets"].items():
            # Named with the ARN's random suffix too: moto looks an ARN it did not make up by the
            # part after "secret:", so the node's GetSecretValue by ARN finds it.
            manager.create_secret(Name=arn.split(":")[6], SecretString=value)
        boto3.client("s3", **client).create_bucket(Bucket=store.removeprefix("s3://").split("/")[0])
        return emu
    if cloud == "gcp":
        emu = emulators.start_gcs(host)
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        options = {"api_endpoint": emu.env["STORAGE_EMULATOR_HOST"]}
        client = storage.Client(
            project="rehearsal", credentials=AnonymousCredentials(), client_options=options
        )
        client.create_bucket(store.removeprefix("gs://").split("/")[0])
        return emu
    # The cluster's own storage account name (Azurite serves any account it is given).
    emu = emulators.start_azurite(host, account=store.split("/")[2], key=emulators.AZURITE_KEY)
    from azure.storage.blob import BlobServiceClient

    BlobServiceClient.from_connection_string(emu.env["AZURE_STORAGE_CONNECTION_STRING"]).create_container(
        store.split("/")[3]
    )
    return emu


def _wait_for_ssh(m: machine.Machine, host_key: str, key_path: Path, user: str) -> float:
    """Seconds from boot until sshd accepts the cluster key while presenting exactly `host_key`."""
    import paramiko

    pinned = host_key.split()[:2]
    deadline = m.started + SSH_TIMEOUT_S
    while time.monotonic() < deadline:
        if not m.running():
            raise NodeError(m.name, f"the container halted during boot; console log: {m.console}")
        client = paramiko.SSHClient()
        client.get_host_keys().add(
            m.address,
            pinned[0],
            paramiko.PKey.from_type_string(pinned[0], base64.b64decode(pinned[1])),
        )
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(m.address, username=user, key_filename=str(key_path), timeout=3, banner_timeout=3,
                           auth_timeout=5, look_for_keys=False, allow_agent=False)  # fmt: skip
            return time.monotonic() - m.started
        except (OSError, paramiko.SSHException):
            time.sleep(0.3)
        finally:
            client.close()
    raise NodeError(
        m.name, f"no SSH with the pinned host key within {SSH_TIMEOUT_S:.0f} s; console log: {m.console}"
    )


@contextmanager
def rehearsal(cloud: str, nodes: int, state_dir: Path, workdir: Path) -> Iterator[Rehearsal]:
    """Boot `nodes` nodes of a `cloud` cluster (see the module docstring); torn down on exit."""
    reason = unavailable()
    if reason is not None:
        raise ConfigError(reason)
    root = rootfs.rootfs(state_dir)
    wheels = index.wheels(state_dir, cloud)
    material = render(cloud, nodes)
    venv, base = host_python()
    workdir.mkdir(parents=True, exist_ok=True)
    key_path = workdir / "id_ed25519"
    key_path.write_text(material["private_key"])
    key_path.chmod(0o600)
    with ExitStack() as stack:
        lock = stack.enter_context(MACHINE_LOCK.open("w"))
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        net = stack.enter_context(network.rehearsal_net())
        emu = _emulator(cloud, net.gateway, material)
        stack.callback(emu.stop)
        services = clouds.CLOUDS[cloud](
            material,
            net.node_of,
            environment=dict(_node_env(cloud, emu.env)),
            upstreams={"moto": emu.env.get("AWS_ENDPOINT_URL", "")},
        )
        front = services.front()
        tls = serve.authority(list(front), net.gateway)

        def dispatch(req: serve.Request) -> serve.Response:
            handler = front.get(req.host)
            return handler(req) if handler else serve.reply(404, f'{{"error": "no service {req.host}"}}')

        r = Rehearsal(cloud, material, services, net, host_env=dict(emu.env), key_path=key_path)
        r.logs["front"] = stack.enter_context(serve.serving(net.gateway, 443, dispatch, tls=tls.context))
        pypi_port = emulators_free_port()
        r.logs["index"] = stack.enter_context(
            serve.serving(net.gateway, pypi_port, index.serve_folder(wheels))
        )
        r.logs["metadata"] = stack.enter_context(
            serve.serving(network.METADATA_IP, 80, services.metadata, transparent=True)
        )
        # A cloud's DNS answers for its nodes' private addresses (reverse lookups included).
        peers = {f"node-{k}.rehearsal.internal": net.address(k) for k in range(len(material["nodes"]))}
        layer = machine.ImageLayer(
            hosts={**services.hosts(net.gateway), **peers},
            ca_pem=tls.ca_pem,
            environment=services.environment,
            files={"/etc/pip.conf": index.pip_conf(f"http://{net.gateway}:{pypi_port}/")},
            binds=(str(venv), str(base)),
            hook=lambda root: index.torch_environment(root, IMAGE_TORCH[cloud], base),
        )
        for k, node in enumerate(material["nodes"]):
            net.add_node()
            m = stack.enter_context(
                machine.boot_machine(
                    name=f"node-{k}",
                    rootfs=root,
                    workdir=workdir / f"node-{k}",
                    netns=net.netns(k),
                    address=net.address(k),
                    user_data=node["user_data"],
                    layer=layer,
                )  # fmt: skip
            )
            r.machines.append(m)
        user = material["inventory"]["user"]
        for k, m in enumerate(r.machines):
            r.ssh_ready_s.append(
                _wait_for_ssh(m, material["inventory"]["nodes"][k]["host_key"], key_path, user)
            )
        r.inventory_path = _write_inventory(r, workdir, key_path, venv)
        yield r


def emulators_free_port() -> int:
    from lepton_infra.data.emulators import free_port

    return free_port()


def _node_env(cloud: str, emulator_env: dict[str, str]) -> dict[str, str]:
    """The SDKs' own endpoint variables that point a node's data plane at the store emulator."""
    if cloud == "aws":
        return {
            "AWS_ENDPOINT_URL_S3": emulator_env["AWS_ENDPOINT_URL"],
            "AWS_ENDPOINT_URL_SQS": emulator_env["AWS_ENDPOINT_URL"],
        }
    if cloud == "gcp":
        return {"STORAGE_EMULATOR_HOST": emulator_env["STORAGE_EMULATOR_HOST"]}
    return {"AZURE_STORAGE_CONNECTION_STRING": emulator_env["AZURE_STORAGE_CONNECTION_STRING"]}


def _write_inventory(r: Rehearsal, workdir: Path, key_path: Path, venv: Path) -> Path:
    """The component's inventory output with the containers' addresses as the nodes', the host's
    environment (bind-mounted at the same path) as the cluster's `python`, and no GPUs (the
    rehearsal has none: the preflight would rightly refuse nodes that lack the inventory's GPUs)."""
    inventory = dict(r.material["inventory"])
    inventory["nodes"] = [
        {**node, "host": r.net.address(k), "private_ip": r.net.address(k), "port": 22, "gpus": 0}
        for k, node in enumerate(inventory["nodes"])
    ]
    inventory["python"] = str(venv / "bin" / "python")
    inventory["private_key_path"] = str(key_path)
    path = workdir / "inventory.json"
    path.write_text(json.dumps(inventory, indent=2))
    return path
