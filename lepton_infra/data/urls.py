"""Parsing of store and queue URLs: one place that says which schemes exist and what each names."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from lepton_infra.errors import ConfigError

STORE_SCHEMES = ("s3", "gs", "az", "file")


@contextmanager
def quiet_google_import() -> Iterator[None]:
    """Google's client libraries warn on import that they will drop this Python some day: a notice
    for whoever maintains the machine image, not for a CLI user, so it stays off stderr."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Google will stop supporting.*", category=FutureWarning)
        yield


@dataclass(frozen=True)
class StoreUrl:
    """`scheme://bucket/prefix`. For `az://` the bucket is `account/container`; for `file://` the
    bucket is empty and `prefix` is the absolute directory."""

    url: str
    scheme: str
    bucket: str
    prefix: str
    account: str = ""

    def key(self, relative: str) -> str:
        """The full object key of `relative` under this URL's prefix."""
        relative = relative.lstrip("/")
        if not self.prefix:
            return relative
        return f"{self.prefix}/{relative}" if relative else self.prefix

    def join(self, *parts: str) -> str:
        """The URL of a sub-prefix (`runs/<id>/<node>`), as a string another process can open."""
        tail = "/".join(p.strip("/") for p in parts if p.strip("/"))
        return f"{self.url.rstrip('/')}/{tail}" if tail else self.url


def parse_store_url(url: str) -> StoreUrl:
    """Split a store URL, or raise ConfigError naming it and the schemes allowed."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"store URL {url!r} is not a URL; use s3://bucket[/prefix], gs://bucket[/prefix], "
            "az://account/container[/prefix] or file:///absolute/dir"
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in STORE_SCHEMES:
        raise ConfigError(
            f"store URL {url!r} has unknown scheme {parts.scheme!r}; allowed: "
            + ", ".join(f"{s}://" for s in STORE_SCHEMES)
        )
    path = unquote(parts.path)
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise ConfigError(f"store URL {url!r}: file:// URLs need an absolute path (file:///dir)")
        return StoreUrl(url=url.rstrip("/"), scheme=scheme, bucket="", prefix=path.rstrip("/") or "/")
    if not parts.netloc:
        raise ConfigError(f"store URL {url!r} names no bucket ({scheme}://BUCKET/prefix)")
    segments = [s for s in path.split("/") if s]
    if scheme == "az":
        if not segments:
            raise ConfigError(f"store URL {url!r}: Azure URLs are az://ACCOUNT/CONTAINER[/prefix]")
        return StoreUrl(
            url=url.rstrip("/"),
            scheme=scheme,
            bucket=segments[0],
            prefix="/".join(segments[1:]),
            account=parts.netloc,
        )
    return StoreUrl(url=url.rstrip("/"), scheme=scheme, bucket=parts.netloc, prefix="/".join(segments))


def azure_connection_settings() -> dict[str, str]:
    """The key=value pairs of `AZURE_STORAGE_CONNECTION_STRING` (empty when unset)."""
    raw = os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
    pairs = (part.split("=", 1) for part in raw.split(";") if "=" in part)
    return {k.strip(): v.strip() for k, v in pairs}
