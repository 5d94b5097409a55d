"""gs:// through google-cloud-storage: resumable (chunked) uploads for large objects, CRC32C checked
by the library on download, our SHA-256 in the object's metadata on top.

obstore also speaks GCS, but through the XML API, whose PUT response must carry an ETag; the GCS
emulator available here (gcp-storage-emulator) sends none, so obstore could not be tested against
it. The official client works against the emulator and the real service alike
(`STORAGE_EMULATOR_HOST` selects the emulator, with anonymous credentials)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from lepton_infra.data.store_backend import MULTIPART_THRESHOLD, PART_SIZE, SHA_KEY, Backend
from lepton_infra.data.urls import StoreUrl, quiet_google_import
from lepton_infra.errors import ConfigError


def gcs_client(url: str) -> Any:
    with quiet_google_import():
        from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="lepton-emulator", credentials=AnonymousCredentials())
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, project = google.auth.default()
    except DefaultCredentialsError as exc:
        raise ConfigError(
            f"store {url!r}: no Google credentials found (GOOGLE_APPLICATION_CREDENTIALS, gcloud "
            "login, or the VM's service account)"
        ) from exc
    return storage.Client(project=project, credentials=credentials)


class GcsBackend(Backend):
    def __init__(self, url: StoreUrl) -> None:
        self._client = gcs_client(url.url)
        self._bucket = self._client.bucket(url.bucket)

    def probe(self, prefix: str) -> None:
        if not self._bucket.exists():
            raise LookupError(f"bucket {self._bucket.name!r} does not exist")
        next(iter(self._client.list_blobs(self._bucket, prefix=prefix or None, max_results=1)), None)

    def _blob(self, key: str, size: int) -> Any:
        # A chunk size turns the upload into a resumable one, sent (and retried) chunk by chunk.
        return self._bucket.blob(key, chunk_size=PART_SIZE if size > MULTIPART_THRESHOLD else None)

    def put_file(self, key: str, path: Path, sha256: str) -> None:
        blob = self._blob(key, path.stat().st_size)
        blob.metadata = {SHA_KEY: sha256}
        blob.upload_from_filename(str(path))

    def put_bytes(self, key: str, data: bytes, sha256: str) -> None:
        blob = self._blob(key, len(data))
        blob.metadata = {SHA_KEY: sha256}
        blob.upload_from_string(data)

    def get_into(self, key: str, out: IO[bytes]) -> str | None:
        from google.api_core.exceptions import NotFound

        blob = self._bucket.get_blob(key)
        if blob is None:
            raise NotFound(f"no object {key!r}")
        blob.download_to_file(out)
        return (blob.metadata or {}).get(SHA_KEY)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        for blob in self._client.list_blobs(self._bucket, prefix=prefix or None):
            yield blob.name, int(blob.size or 0)

    def delete(self, key: str) -> None:
        self._bucket.blob(key).delete()
