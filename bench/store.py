"""Store throughput: our `lepton_infra.data` store client against each cloud's own SDK, same
emulator, same file, same run.

Backends: S3 (moto server; ours = obstore, theirs = boto3 `upload_file`/`download_file`), GCS
(gcp-storage-emulator; ours = google-cloud-storage plus our SHA-256, theirs = google-cloud-storage
directly) and Azure Blob (Azurite; ours = obstore, theirs = azure-storage-blob with
`max_concurrency=8`). Ours also computes and verifies a SHA-256 per object, which the SDK rows do not.

The emulators are single-process Python/Node servers on the same two cores, so they, not the
clients, set most of the absolute MB/s; the ratios say whether our client adds or saves time."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _bench as b

from lepton_infra.data import emulators as emu
from lepton_infra.data import open_store

Op = Callable[[], None]
# google-api-core warns about Python 3.11's end of life on import; not ours to fix.
warnings.filterwarnings("ignore", message="You are using a Python version")


def _s3(bucket: str, src: Path, dst: Path) -> tuple[Op, Op]:
    import boto3

    s3 = boto3.client("s3")
    region = s3.meta.region_name  # the emulator's (not us-east-1): a bucket there names its region
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    return (
        lambda: s3.upload_file(str(src), bucket, "sdk.bin"),
        lambda: s3.download_file(bucket, "sdk.bin", str(dst)),
    )


def _gcs(bucket: str, src: Path, dst: Path) -> tuple[Op, Op]:
    from lepton_infra.data.store_gcs import gcs_client

    client = gcs_client("gs://bench")
    bkt = client.create_bucket(bucket)
    blob = bkt.blob("sdk.bin", chunk_size=8 * 1024 * 1024)
    return (
        lambda: blob.upload_from_filename(str(src)),
        lambda: bkt.blob("sdk.bin").download_to_filename(str(dst)),
    )


def _azure(bucket: str, src: Path, dst: Path) -> tuple[Op, Op]:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    container = service.create_container(bucket)

    def up() -> None:
        with src.open("rb") as f:
            container.upload_blob("sdk.bin", f, overwrite=True, max_concurrency=8)

    def down() -> None:
        with dst.open("wb") as f:
            container.download_blob("sdk.bin", max_concurrency=8).readinto(f)

    return up, down


BACKENDS: dict[
    str, tuple[Callable[[], emu.Emulator], str, Callable[[str, Path, Path], tuple[Op, Op]], str]
] = {
    "s3": (emu.start_moto, "s3://{bucket}", _s3, "boto3"),
    "gs": (emu.start_gcs, "gs://{bucket}", _gcs, "google-cloud-storage"),
    "az": (emu.start_azurite, f"az://{emu.AZURITE_ACCOUNT}/{{bucket}}", _azure, "azure-storage-blob"),
}


def bench_backend(name: str, args: Any, src: Path, scratch: Path) -> None:
    start, url_form, sdk, sdk_name = BACKENDS[name]
    ours_up, ours_down = (
        b.Row(f"{name} upload, lepton (obstore/SDK + sha256)"),
        b.Row(f"{name} download, lepton"),
    )
    theirs_up, theirs_down = b.Row(f"{name} upload, {sdk_name}"), b.Row(f"{name} download, {sdk_name}")
    rows = [ours_up, theirs_up, ours_down, theirs_down]
    try:
        emulator = start()
    except emu.EmulatorUnavailable as exc:
        for row in rows:
            row.skipped = str(exc)
    else:
        saved = {k: os.environ.get(k) for k in emulator.env}
        os.environ.update(emulator.env)
        try:
            sdk_up, sdk_down = sdk(f"lepton-bench-{name}-sdk", src, scratch / "sdk.out")
            bucket = f"lepton-bench-{name}-ours"
            sdk(bucket, src, scratch / "unused")  # our bucket, created by the SDK the same way
            store = open_store(url_form.format(bucket=bucket))
            for _ in range(args.repeat):  # interleaved, so a slow spell hits both
                ours_up.seconds.append(b.timed(lambda: store.put("ours.bin", src))[0])
                theirs_up.seconds.append(b.timed(sdk_up)[0])
                ours_down.seconds.append(b.timed(lambda: store.download("ours.bin", scratch / "ours.out"))[0])
                theirs_down.seconds.append(b.timed(sdk_down)[0])
            assert (scratch / "ours.out").stat().st_size == src.stat().st_size
        finally:
            emulator.stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        mb = src.stat().st_size / 1e6
        for row in rows:
            row.note = f"{mb / row.median:.0f} MB/s"
    b.print_table(f"{name}: one {args.mb} MB object", rows)
    b.ratio("store", f"{name} upload vs {sdk_name}", ours_up, theirs_up)
    b.ratio("store", f"{name} download vs {sdk_name}", ours_down, theirs_down)


def main() -> int:
    p = b.parser(__doc__.splitlines()[0], nodes=1, repeat=3)
    p.add_argument("--mb", type=int, default=32, help="object size in MB (default 32; over 8 goes in parts)")
    p.add_argument("--backends", default="s3,gs,az", help="comma-separated subset of s3,gs,az")
    args = p.parse_args()
    b.check_counts(args, "mb")
    b.print_environment(
        f"store: {args.mb} MB object up and down, ours vs each cloud's SDK, on local emulators"
    )
    scratch = b.scratch_dir("store")
    try:
        src = scratch / "payload.bin"
        src.write_bytes(os.urandom(args.mb * 1024 * 1024))
        for name in args.backends.split(","):
            bench_backend(name.strip(), args, src, scratch)
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    b.finish(args)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
