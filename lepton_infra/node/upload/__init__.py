"""Node-side results uploader: `python -c UPLOADER [--snapshot | --drop-snapshots] STORE_URL PREFIX NAME=PATH ...`.

Shipped with the job as one bundle (this package's modules in one source, lepton_infra/node/
loader.py); a node has no `lepton_infra`. For `file://` stores it needs only the standard
library. For cloud stores it uses the client that cloud-init installs into the nodes' Python
(`obstore==0.12.1` for s3:// and az://, `google-cloud-storage` for gs://) with the node's own
identity (instance profile, managed identity, service account).

It writes the same layout `lepton_infra.data.Store` reads (stores.py), `_lepton_manifest.json`
last (publish.py). Prints one JSON line: {"url": ..., "files": N, "bytes": B} or {"error": ...}
(exit 1). `--snapshot` writes a checkpoint snapshot committed by a pointer; `--drop-snapshots`
deletes `PREFIX/checkpoint/` once the final upload is committed (publish.py).

`fetch(url, cache_root)` is the other direction, for jobs (download.py): importing the bundle as
a file gives it (`$LEPTON_STORE_CLIENT`)."""

from __future__ import annotations

import json
import os
import sys

from .download import fetch
from .publish import drop_snapshots, snapshot, upload
from .stores import reader_for, writer_for

__all__ = ["drop_snapshots", "fetch", "main", "reader_for", "snapshot", "upload", "writer_for"]


def main(argv: list[str]) -> int:
    """The uploader's command line (see above); its exit status."""
    mode = argv[1] if len(argv) > 1 and argv[1] in ("--snapshot", "--drop-snapshots") else ""
    argv = [argv[0], *argv[2:]] if mode else argv
    if len(argv) < 4:
        print(
            "usage: upload.py [--snapshot|--drop-snapshots] STORE_URL PREFIX NAME=PATH ...", file=sys.stderr
        )
        return 2
    url, prefix = argv[1], argv[2]
    sources = dict(a.split("=", 1) for a in argv[3:])
    try:
        present = {k: v for k, v in sources.items() if os.path.exists(v)}
        manifest = snapshot(url, prefix, present) if mode == "--snapshot" else upload(url, prefix, present)
        if mode == "--drop-snapshots":
            try:
                drop_snapshots(url, prefix)
            except Exception as exc:  # noqa: BLE001 - the result is committed; a leftover copy is not fatal
                print(f"dropping {prefix}/checkpoint failed: {exc}", file=sys.stderr)
    except SystemExit:
        raise
    except Exception as exc:  # reported, not raised: the caller records it and the job's status stands
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:500]}))
        return 1
    print(
        json.dumps(
            {
                "url": f"{url.rstrip('/')}/{prefix.strip('/')}",
                "files": len(manifest["files"]),  # type: ignore[arg-type]
                "bytes": manifest["bytes"],
            }
        )
    )
    return 0
