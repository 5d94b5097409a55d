"""The CIFAR-10 training job as a node runs it: `python train.py ...` (alone or under torchrun) with
real torch, checked through its exit code, its log lines and the files it leaves behind."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
TRAIN_PY = REPO / "workloads" / "cifar10" / "train.py"
PROGRESS_KEYS = {"epoch", "epochs", "step", "steps", "loss"}
# Small but learnable: lr 0.01 makes the loss fall within a few hundred steps on the synthetic set.
TINY = [
    "--train-samples",
    "2000",
    "--test-samples",
    "500",
    "--batch-size",
    "8",
    "--lr",
    "0.01",
    "--threads",
    "1",
]


def _load_train_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cifar10_train", TRAIN_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


train_job = _load_train_module()


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("LEPTON_", "RANK", "WORLD_SIZE", "LOCAL_"))
    }
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", **extra)
    return env


def run_train(*args: str, cwd: Path, timeout: int = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TRAIN_PY), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(**env),
        timeout=timeout,
        check=False,
    )


def progress_lines(stdout: str) -> list[dict[str, Any]]:
    return [
        json.loads(line.split(" ", 1)[1])
        for line in stdout.splitlines()
        if line.startswith("LEPTON_PROGRESS ")
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- data


def test_synthetic_data_is_deterministic_cifar_shaped_and_prefix_stable() -> None:
    train_a, test_a = train_job.synthetic_cifar10(1500, 300, seed=3)
    train_b, test_b = train_job.synthetic_cifar10(1500, 300, seed=3)
    assert train_a.images.tobytes() == train_b.images.tobytes()
    assert train_a.labels.tobytes() == train_b.labels.tobytes()
    assert test_a.images.tobytes() == test_b.images.tobytes()
    assert train_a.images.shape == (1500, 3, 32, 32) and train_a.images.dtype == np.uint8
    assert train_a.labels.shape == (1500,) and train_a.labels.dtype == np.int64
    assert test_a.images.shape == (300, 3, 32, 32)
    assert set(np.unique(train_a.labels)) == set(range(10))
    # Train and test are different samples; another seed is another data set.
    assert train_a.images[:300].tobytes() != test_a.images.tobytes()
    other, _ = train_job.synthetic_cifar10(1500, 300, seed=4)
    assert other.images.tobytes() != train_a.images.tobytes()
    # Asking for fewer samples gives the first ones of the bigger set (seeded per chunk).
    small, _ = train_job.synthetic_cifar10(700, 10, seed=3)
    assert small.images.tobytes() == train_a.images[:700].tobytes()
    # Pixels use the whole range, not a constant image.
    assert 60 < train_a.images.mean() < 200 and train_a.images.std() > 30


def _write_fake_cifar(folder: Path, per_batch: int = 6) -> dict[str, Any]:
    """CIFAR-10's python version in miniature: Python-2-style pickles with bytes keys."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written: dict[str, Any] = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [b"x.png"] * per_batch,
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (data, labels)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"]}, protocol=2))
    return written


def _tarball(src_parent: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src_parent / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return dest


def test_cifar10_reader_reads_the_official_format_from_folder_parent_and_tarball(tmp_path: Path) -> None:
    root = tmp_path / "data"
    written = _write_fake_cifar(root / "cifar-10-batches-py")
    tar_dir = tmp_path / "tarred"
    tar_dir.mkdir()
    tarball = _tarball(root, tar_dir / "cifar-10-python.tar.gz")
    for source in (root / "cifar-10-batches-py", root, tarball, tar_dir):
        train, test = train_job.load_cifar10(source)
        assert train.images.shape == (30, 3, 32, 32) and train.images.dtype == np.uint8
        assert test.images.shape == (6, 3, 32, 32)
        # Row layout is 1024 red, 1024 green, 1024 blue values, each 32x32 row-major.
        data, labels = written["data_batch_1"]
        assert np.array_equal(train.images[0, 0].ravel(), data[0, :1024])
        assert np.array_equal(train.images[0, 2, 0], data[0, 2048 : 2048 + 32])
        assert train.labels[:6].tolist() == labels
        assert test.labels.tolist() == written["test_batch"][1]


def test_cifar10_reader_refuses_pickles_that_build_anything_but_arrays(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_fake_cifar(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": io.StringIO("x"), b"labels": []}))
    with pytest.raises(train_job.SetupError, match="refusing to load _io.StringIO"):
        train_job.load_cifar10(folder)


def test_missing_data_dir_fails_with_a_clear_message(tmp_path: Path) -> None:
    proc = run_train("--data", "cifar10", "--data-dir", str(tmp_path / "nope"), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"--data-dir '{tmp_path / 'nope'}' does not exist" in proc.stderr
    assert "cifar-10-python.tar.gz" in proc.stderr
    assert not (tmp_path / "outputs" / "metrics.json").exists()


# The remaining usage errors call main() in-process: same parser, same messages, no torch start-up.


def test_a_data_dir_without_cifar10_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    # --data defaults to auto, which picks cifar10 because a --data-dir is given.
    assert train_job.main(["--data-dir", str(empty), "--output-dir", str(tmp_path / "out")]) == 2
    assert f"--data-dir '{empty}' holds no CIFAR-10 python version" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "argument --batch-size: expected a positive integer, got 0"),
        (["--lr", "-1"], "argument --lr: expected a positive number, got -1"),
        (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (["--data", "cifar10"], "--data cifar10 needs --data-dir DIR"),
    ],
)
def test_bad_arguments_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        train_job.main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_plot_is_skipped_with_a_message_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert not train_job.plot_loss_curve(tmp_path / "loss_curve.png", [[1, 2.3]], [])
    assert "matplotlib is not installed: skipping loss_curve.png" in capsys.readouterr().out
    assert not (tmp_path / "loss_curve.png").exists()


# --------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    work = tmp_path_factory.mktemp("single")
    proc = run_train(
        *TINY, "--epochs", "2", "--log-every", "50", cwd=work, LEPTON_OUTPUT_DIR=str(work / "out")
    )
    assert proc.returncode == 0, proc.stderr
    return work / "out", proc


def test_single_process_run_writes_results_and_the_loss_falls(
    two_epoch_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, proc = two_epoch_run
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "loss_curve.png",
        "metrics.json",
        "model.pt",
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["world_size"] == 1
    assert metrics["torch_version"] == torch.__version__ and metrics["device"] == "cpu"
    assert metrics["args"]["batch_size"] == 8 and metrics["args"]["epochs"] == 2
    assert metrics["data"] == {"kind": "synthetic", "seed": 0, "train_samples": 2000, "test_samples": 500}
    epochs = metrics["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(
        e["samples_per_s"] > 0 and e["wall_time_s"] > 0 and e["test_samples_evaluated"] == 500 for e in epochs
    )
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]
    assert metrics["final_test_accuracy"] == epochs[1]["test_accuracy"] > 0.5  # chance is 0.1
    curve = metrics["loss_curve"]
    assert curve[0][1] > 2.0 and curve[-1][1] < 1.5 and curve[-1][0] == 500
    # The seed's log line, the human epoch line, and the progress contract.
    assert re.search(r"^\[1,    50\] loss: 2\.\d{3}$", proc.stdout, re.M)
    assert re.search(
        r"^epoch 2/2: train_loss=\d\.\d{3} test_acc=\d\.\d{3} samples/s=\d+ time=", proc.stdout, re.M
    )
    progress = progress_lines(proc.stdout)
    assert progress and all(set(p) == PROGRESS_KEYS for p in progress)
    assert {"epoch": 2, "epochs": 2, "step": 250, "steps": 250} == {
        k: progress[-1][k] for k in PROGRESS_KEYS - {"loss"}
    }
    # model.pt is the plain LeNet state_dict; the checkpoint has what a resume needs.
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["conv1.weight"].shape == (6, 3, 5, 5) and state["fc3.weight"].shape == (10, 84)
    net = train_job.Net()
    net.load_state_dict(state)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and set(ckpt) >= {"model", "optimizer", "metrics"}
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_resume_continues_a_one_epoch_run_to_the_same_final_model(
    tmp_path: Path, two_epoch_run: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    out = tmp_path / "out"
    first = run_train(*TINY, "--epochs", "1", "--output-dir", str(out), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert [e["epoch"] for e in json.loads((out / "metrics.json").read_text())["epochs"]] == [1]
    second = run_train(*TINY, "--epochs", "2", "--output-dir", str(out), "--resume", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "resuming from" in second.stdout and "epoch 1/2" not in second.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2] and metrics["resumed_from_epoch"] == 1
    # Same data order, weights and momentum as the uninterrupted two-epoch run: the same model.
    uninterrupted = torch.load(two_epoch_run[0] / "model.pt", weights_only=True)
    resumed = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    # A checkpoint from other data is refused rather than silently mixed in.
    other = run_train(*TINY, "--train-samples", "1000", "--output-dir", str(out), "--resume", cwd=tmp_path)
    assert other.returncode == 2
    assert "checkpoint was trained with data train_samples=2000" in other.stderr


def test_fail_at_step_exits_with_code_17(tmp_path: Path) -> None:
    proc = run_train(*TINY, "--fail-at-step", "3", "--output-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 17
    assert "--fail-at-step 3: rank 0 exits with code 17" in proc.stdout


def _torchrun_node(rank: int, port: int, out: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--node-rank",
        str(rank),
        "--nproc-per-node",
        "1",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        "--rdzv-conf",
        "timeout=30",
        str(TRAIN_PY),
        *args,
    ]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=out.parent,
        env=_env(LEPTON_OUTPUT_DIR=str(out)),
    )


def _run_two_nodes(tmp_path: Path, *args: str) -> tuple[list[int], list[str], list[Path]]:
    port = free_port()
    outs = [tmp_path / f"node{r}" / "out" for r in (0, 1)]
    for out in outs:
        out.parent.mkdir(parents=True)
    procs = [_torchrun_node(r, port, outs[r], *args) for r in (0, 1)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=150)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], logs, outs


@pytest.mark.slow
def test_two_node_ddp_run_trains_on_both_and_only_rank_0_writes(tmp_path: Path) -> None:
    codes, logs, outs = _run_two_nodes(
        tmp_path, *TINY, "--test-samples", "501", "--epochs", "2", "--log-every", "50"
    )
    assert codes == [0, 0], logs
    metrics = json.loads((outs[0] / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["backend"] == "gloo" and metrics["global_batch_size"] == 16
    # Each rank takes half the samples per epoch; accuracy is over the whole (odd-sized) test set.
    assert metrics["steps_per_epoch"] == 125
    assert [e["test_samples_evaluated"] for e in metrics["epochs"]] == [501, 501]
    assert metrics["epochs"][1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    assert sorted(p.name for p in outs[0].iterdir()) == [
        "checkpoint.pt",
        "loss_curve.png",
        "metrics.json",
        "model.pt",
    ]
    assert not outs[1].exists()
    assert "LEPTON_PROGRESS" in logs[0] and "LEPTON_PROGRESS" not in logs[1]
    assert "[1,    50] loss:" in logs[0] and "loss:" not in logs[1]


@pytest.mark.slow
def test_a_rank_dying_mid_run_fails_its_peer_too(tmp_path: Path) -> None:
    codes, logs, _ = _run_two_nodes(tmp_path, *TINY, "--fail-at-step", "20", "--fail-rank", "1")
    assert "--fail-at-step 20: rank 1 exits with code 17" in logs[1]
    # torchrun reports its worker's failure as its own non-zero exit; the survivor does not hang.
    assert codes[0] != 0 and codes[1] != 0, logs
