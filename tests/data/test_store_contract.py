"""One contract suite for the object store, run against every backend: a local directory and real
emulators of S3 (moto), GCS (gcp-storage-emulator) and Azure Blob (Azurite)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from lepton_infra.data import ChecksumMismatch, NotCommitted, StoreError, open_store
from lepton_infra.data import store as store_module
from lepton_infra.data.store import MANIFEST, MULTIPART_THRESHOLD
from lepton_infra.errors import ConfigError


def _tree(root: Path) -> dict[str, bytes]:
    files = {
        "metrics.json": b'{"loss": 0.25}',
        "ckpt/model.pt": os.urandom(200_000),
        "ckpt/deep/er/opt.pt": os.urandom(3_000),
        "logs/node.log": b"line 1\nline 2\n",
        "empty.txt": b"",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_put_get_list_delete_round_trip(store_url: str) -> None:
    store = open_store(store_url)
    store.check()
    store.put("a/one.txt", b"hello")
    store.put("a/two.bin", os.urandom(1000))
    store.put("b/three.txt", b"x")
    assert store.get("a/one.txt") == b"hello"
    assert [(o.key, o.size) for o in store.list("a")] == [("a/one.txt", 5), ("a/two.bin", 1000)]
    assert {o.key for o in store.list()} == {"a/one.txt", "a/two.bin", "b/three.txt"}
    store.delete("a/one.txt")
    assert [o.key for o in store.list("a")] == ["a/two.bin"]
    with pytest.raises(StoreError, match="no object 'a/one.txt'"):
        store.get("a/one.txt")


def test_folder_upload_and_download_are_verified_and_committed_last(store_url: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = _tree(src)
    store = open_store(store_url)
    manifest = store.upload_dir(src, "runs/r1/node-0", workers=4)
    assert set(manifest["files"]) == set(files)  # type: ignore[arg-type]
    listed = {o.key for o in store.list("runs/r1/node-0")}
    assert listed == {f"runs/r1/node-0/{rel}" for rel in files} | {f"runs/r1/node-0/{MANIFEST}"}

    dest = tmp_path / "dest"
    store.download_dir("runs/r1/node-0", dest)
    got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == files


def test_large_object_goes_in_parts_and_round_trips(store_url: str, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(MULTIPART_THRESHOLD + 3 * 1024 * 1024))
    store = open_store(store_url)
    store.put("big.bin", big)
    out = tmp_path / "back.bin"
    store.download("big.bin", out)
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(big.read_bytes()).digest()
    assert [o.size for o in store.list() if o.key == "big.bin"] == [big.stat().st_size]


def test_corrupted_object_is_refused_and_nothing_is_kept(store_url: str, tmp_path: Path) -> None:
    store = open_store(store_url)
    # Bytes stored under another content's checksum: what a corrupted copy looks like to a reader.
    wrong = hashlib.sha256(b"what was written").hexdigest()
    store._backend.put_bytes(store.location.key("obj"), b"what came back", wrong)
    with pytest.raises(ChecksumMismatch, match="'obj' has SHA-256"):
        store.get("obj")
    with pytest.raises(ChecksumMismatch):
        store.download("obj", tmp_path / "dl" / "obj")
    assert list((tmp_path / "dl").iterdir()) == []


def test_folder_whose_upload_died_midway_is_not_committed(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    _tree(src)
    real = store_module.sha256_file

    def dies_on_model(path: Path) -> str:
        if path.name == "model.pt":
            raise OSError("node powered off")
        return real(path)

    monkeypatch.setattr(store_module, "sha256_file", dies_on_model)
    store = open_store(store_url)
    with pytest.raises(OSError, match="powered off"):
        store.upload_dir(src, "runs/r2/node-1", workers=1)
    assert store.manifest("runs/r2/node-1") is None
    with pytest.raises(NotCommitted, match="never finished"):
        store.download_dir("runs/r2/node-1", tmp_path / "dest")


def test_missing_bucket_is_a_config_error_naming_the_url(store_url: str) -> None:
    if store_url.startswith("file://"):
        missing = store_url + "-nonexistent"
    else:
        scheme, rest = store_url.split("://", 1)
        parts = rest.split("/")
        index = 1 if scheme == "az" else 0
        parts[index] = "missing-bucket-" + parts[index][-6:]
        missing = f"{scheme}://{'/'.join(parts)}"
    with pytest.raises(ConfigError) as err:
        open_store(missing).check()
    assert missing in str(err.value)


@pytest.mark.parametrize("url", ["ftp://host/dir", "s4://bucket", "bucket/prefix", "file://relative/dir"])
def test_unknown_scheme_or_bad_url_is_a_config_error_naming_it(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        open_store(url)
    assert url in str(err.value)


def test_s3_without_credentials_is_a_config_error_naming_the_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="'s3://some-bucket/x'.*no AWS credentials"):
        open_store("s3://some-bucket/x")


def test_gcs_without_credentials_is_a_config_error_naming_the_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "true")  # google-auth: do not probe a metadata server
    with pytest.raises(ConfigError, match="'gs://some-bucket'.*no Google credentials"):
        open_store("gs://some-bucket")
