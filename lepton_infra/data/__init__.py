"""The data plane: object store and job queue clients over the clouds' services and local files."""

from lepton_infra.data.store import ChecksumMismatch, NotCommitted, ObjectInfo, Store, StoreError, open_store

__all__ = ["ChecksumMismatch", "NotCommitted", "ObjectInfo", "Store", "StoreError", "open_store"]
