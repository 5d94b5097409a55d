"""The CIFAR-10 training job as a node runs it: `python train.py ...` (alone or under torchrun) with
real torch, checked through its exit code, its log lines and the files it leaves behind. Data sets
are tiny files in the official format; fault injection goes through the test workload in
tests/workloads/cifar10_faults, never through the real job."""

from __future__ import annotations

import importlib.util
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
JOB = REPO / "workloads" / "cifar10"
TRAIN_PY = JOB / "train.py"
FAULTY_PY = REPO / "tests" / "workloads" / "cifar10_faults" / "train.py"
PROGRESS_KEYS = {"epoch", "epochs", "step", "steps", "loss", "t"}  # t: epoch seconds
OUTPUTS = ["checkpoint.pt", "loss_curve.png", "metrics.json", "model.pt"]
# Small but learnable: lr 0.01 makes the loss fall within a few hundred steps on the synthetic set.
TINY = ["--data", "synthetic", "--train-samples", "2000", "--test-samples", "500"]
TINY += ["--batch-size", "8", "--lr", "0.01", "--threads", "1"]

sys.path.insert(0, str(JOB))  # the job's sibling modules, as `python train.py` finds them
import cifar  # noqa: E402
import synthetic  # noqa: E402


def _load_train_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cifar10_train", TRAIN_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_job = _load_train_module()


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("LEPTON_", "RANK", "WORLD_SIZE", "LOCAL_"))
    }
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", **extra)
    return env


def run_train(
    *args: str, cwd: Path, script: Path = TRAIN_PY, timeout: int = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
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


def write_fake_cifar(folder: Path, per_batch: int = 6) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- data


def test_synthetic_data_is_deterministic_cifar_shaped_and_prefix_stable() -> None:
    train_a = synthetic.SyntheticCIFAR10(1500, seed=3)
    train_b = synthetic.SyntheticCIFAR10(1500, seed=3)
    test_a = synthetic.SyntheticCIFAR10(300, seed=3, train=False)
    assert torch.equal(train_a.data, train_b.data) and torch.equal(train_a.targets, train_b.targets)
    assert train_a.data.shape == (1500, 3, 32, 32) and train_a.data.dtype == torch.uint8
    assert test_a.data.shape == (300, 3, 32, 32) and len(test_a) == 300
    assert set(train_a.targets.tolist()) == set(range(10))
    image, label = train_a[0]
    assert image.shape == (3, 32, 32) and label == int(train_a.targets[0])
    # Train and test are different samples; another seed is another data set.
    assert not torch.equal(train_a.data[:300], test_a.data)
    assert not torch.equal(synthetic.SyntheticCIFAR10(1500, seed=4).data, train_a.data)
    # Asking for fewer samples gives the first ones of the bigger set (seeded per chunk).
    assert torch.equal(synthetic.SyntheticCIFAR10(700, seed=3).data, train_a.data[:700])
    # Pixels use the whole range, not a constant image.
    pixels = train_a.data.float()
    assert 60 < pixels.mean() < 200 and pixels.std() > 30


def test_cifar10_dataset_reads_the_official_format_from_folder_parent_and_tarball(tmp_path: Path) -> None:
    root = tmp_path / "data"
    written = write_fake_cifar(root / "cifar-10-batches-py")
    tar_dir = tmp_path / "tarred"
    tar_dir.mkdir()
    with tarfile.open(tar_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    for source in (root / "cifar-10-batches-py", root, tar_dir / "cifar-10-python.tar.gz", tar_dir):
        train, test = cifar.CIFAR10(source, train=True), cifar.CIFAR10(source, train=False)
        assert train.data.shape == (30, 3, 32, 32) and train.data.dtype == torch.uint8
        assert len(test) == 6
        # A row is 1024 red, 1024 green, 1024 blue values, each 32x32 row-major.
        data, labels = written["data_batch_1"]
        image, label = train[0]
        assert np.array_equal(image[0].numpy().ravel(), data[0, :1024])
        assert np.array_equal(image[2, 0].numpy(), data[0, 2048 : 2048 + 32])
        assert label == labels[0] and train.targets[:6].tolist() == labels
        assert test.targets.tolist() == written["test_batch"][1]
    assert len(cifar.CIFAR10(root, train=True, limit=7)) == 7


class _Exploit:
    """A pickle that runs a shell command when loaded, as a tampered download could carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_reader_refuses_a_malicious_pickle_without_running_it(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(folder)
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": []}, protocol=2))
    with pytest.raises(cifar.DataError, match=r"refusing to load (posix|os)\.system"):
        cifar.CIFAR10(folder, train=False)
    assert not marker.exists()
    # A pickle of the right classes but the wrong shape is refused too, with what was expected.
    bad = {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [1, 2]}
    (folder / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(cifar.DataError, match=r"'data' is uint8 \(2, 100\), expected uint8 \(N, 3072\)"):
        cifar.CIFAR10(folder, train=False)


def test_transforms_crop_with_padding_flip_and_normalise() -> None:
    image = torch.arange(3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 32, 32)
    torch.manual_seed(0)
    crops = [cifar.RandomCrop(32, padding=4)(image) for _ in range(20)]
    assert all(c.shape == (3, 32, 32) for c in crops)
    assert any(not torch.equal(c, image) for c in crops)  # shifted windows, zero-filled at the border
    assert any((c == 0).all(dim=0).any() for c in crops)
    assert torch.equal(cifar.RandomHorizontalFlip(p=1.0)(image), image.flip(-1))
    assert torch.equal(cifar.RandomHorizontalFlip(p=0.0)(image), image)
    mid = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    out = cifar.transforms(augment=False)(mid)
    expected = (128 / 255 - torch.tensor(cifar.MEAN)) / torch.tensor(cifar.STD)
    assert out.dtype == torch.float32 and torch.allclose(out[:, 0, 0], expected)


# --------------------------------------------------------------------------- usage errors


def test_without_data_the_job_says_so_and_exits_2_rather_than_inventing_some(tmp_path: Path) -> None:
    proc = run_train("--epochs", "1", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no training data: --data-dir DIR (or $LEPTON_DATA_DIR)" in proc.stderr
    assert "--data synthetic" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_missing_data_dir_fails_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    assert train_job.main(["--data-dir", str(missing), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--data-dir '{missing}' does not exist" in err and "cifar-10-python.tar.gz" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_data_dir_without_cifar10_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_job.main(["--data-dir", str(empty), "--output-dir", str(tmp_path / "out")]) == 2
    assert f"--data-dir '{empty}' holds no CIFAR-10 python version" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got '0'"),
        (["--lr", "-1"], "argument --lr: expected a number > 0, got '-1'"),
        (["--lr", "nan"], "argument --lr: expected a number > 0, got 'nan'"),
        (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (["--data", "imagenet"], "argument --data: invalid choice: 'imagenet'"),
    ],
)
def test_bad_arguments_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        train_job.main(["--data", "synthetic", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_titles_say_synthetic_data_is_not_cifar10() -> None:
    # The stand-in reaches ~0.99 accuracy: a title that read "cifar10" alone would mislead.
    synthetic = train_job.describe_data({"kind": "synthetic", "seed": 0})
    assert "SYNTHETIC" in synthetic and "not CIFAR-10" in synthetic
    assert train_job.describe_data({"kind": "cifar10", "data_dir": "/d"}) == "real CIFAR-10"


def test_plot_is_skipped_with_a_message_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert not train_job.plot(tmp_path / "loss_curve.png", "t", [[1, 2.3]], [])
    assert "matplotlib is not installed: skipping loss_curve.png" in capsys.readouterr().out
    assert not (tmp_path / "loss_curve.png").exists()


# --------------------------------------------------------------------------- training runs


def test_training_on_official_format_files_writes_metrics_checkpoint_and_plot(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path / "data" / "cifar-10-batches-py", per_batch=16)
    proc = run_train(
        *("--batch-size", "8", "--epochs", "1", "--log-every", "5", "--threads", "1"),
        cwd=tmp_path,
        LEPTON_DATA_DIR=str(tmp_path / "data"),
        LEPTON_OUTPUT_DIR=str(tmp_path / "out"),
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps_per_epoch"] == 10
    assert metrics["data"] == {
        "kind": "cifar10",
        "data_dir": str(tmp_path / "data"),
        "train_samples": 80,
        "test_samples": 16,
    }
    assert metrics["args"]["no_augment"] is False  # the real data set trains with crop and flip
    assert [e["test_samples_evaluated"] for e in metrics["epochs"]] == [16]
    assert re.search(r"^\[1,     5\] loss: \d\.\d{3}$", proc.stdout, re.M)
    last = progress_lines(proc.stdout)[-1]
    assert (last["epoch"], last["epochs"], last["step"], last["steps"]) == (1, 1, 10, 10)
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    work = tmp_path_factory.mktemp("single")
    proc = run_train(
        *TINY, "--epochs", "2", "--log-every", "50", cwd=work, LEPTON_OUTPUT_DIR=str(work / "out")
    )
    assert proc.returncode == 0, proc.stderr
    return work / "out", proc


def test_synthetic_run_when_asked_writes_results_and_the_loss_falls(
    two_epoch_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, proc = two_epoch_run
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["world_size"] == 1
    assert metrics["torch_version"] == torch.__version__ and metrics["device"] == "cpu"
    assert metrics["amp"] is False  # autocast and loss scaling only on CUDA
    assert metrics["args"]["batch_size"] == 8 and metrics["args"]["epochs"] == 2
    assert metrics["data"] == {"kind": "synthetic", "seed": 0, "train_samples": 2000, "test_samples": 500}
    epochs = metrics["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["samples_per_s"] > 0 and e["test_samples_evaluated"] == 500 for e in epochs)
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
        k: progress[-1][k] for k in PROGRESS_KEYS - {"loss", "t"}
    }
    # model.pt is the plain LeNet state_dict; the checkpoint has what a resume needs.
    net = train_job.Net()
    net.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and set(ckpt) >= {"model", "optimizer", "scaler", "metrics", "curve"}


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


# --------------------------------------------------------------------------- faults (test workload)


def test_the_real_job_has_no_fault_hooks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train_job.main(["--data", "synthetic", "--fail-at-step", "3"])
    assert "unrecognized arguments: --fail-at-step 3" in capsys.readouterr().err


def test_fail_at_step_in_the_test_workload_exits_with_code_17(tmp_path: Path) -> None:
    proc = run_train(
        *TINY, "--fail-at-step", "3", "--output-dir", str(tmp_path / "out"), script=FAULTY_PY, cwd=tmp_path
    )
    assert proc.returncode == 17, proc.stderr
    assert "--fail-at-step 3: rank 0 exits with code 17" in proc.stdout
    assert not (tmp_path / "out" / "metrics.json").exists()


def _torchrun_node(rank: int, port: int, out: Path, script: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank)]
    cmd += ["--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    cmd += ["--rdzv-conf", "timeout=30", str(script), *args]
    with (out.parent / "log").open("w") as log:  # a file, not a pipe: a stuck run still shows its log
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=out.parent,
            env=_env(LEPTON_OUTPUT_DIR=str(out)),
        )


def _run_two_nodes(
    tmp_path: Path, *args: str, script: Path = TRAIN_PY
) -> tuple[list[int], list[str], list[Path]]:
    port = free_port()
    outs = [tmp_path / f"node{r}" / "out" for r in (0, 1)]
    for out in outs:
        out.parent.mkdir(parents=True)
    procs = [_torchrun_node(r, port, outs[r], script, *args) for r in (0, 1)]
    try:
        for p in procs:
            p.wait(timeout=150)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.wait()
        logs = [(out.parent / "log").read_text() for out in outs]
        pytest.fail(f"two-node run still going after 150 s:\n--- node 0:\n{logs[0]}\n--- node 1:\n{logs[1]}")
    return [p.returncode for p in procs], [(out.parent / "log").read_text() for out in outs], outs


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
    assert sorted(p.name for p in outs[0].iterdir()) == OUTPUTS
    assert not outs[1].exists()
    assert "LEPTON_PROGRESS" in logs[0] and "LEPTON_PROGRESS" not in logs[1]
    assert "[1,    50] loss:" in logs[0] and "loss:" not in logs[1]


@pytest.mark.slow
def test_a_rank_dying_mid_run_fails_its_peer_too(tmp_path: Path) -> None:
    codes, logs, _ = _run_two_nodes(
        tmp_path, *TINY, "--fail-at-step", "20", "--fail-rank", "1", script=FAULTY_PY
    )
    assert "--fail-at-step 20: rank 1 exits with code 17" in logs[1]
    # torchrun reports its worker's failure as its own non-zero exit; the survivor does not hang.
    assert codes[0] != 0 and codes[1] != 0, logs
