"""Artifact payloads over fsspec: a local directory by default, S3 through s3fs, memory:// in tests.

Keys are relative paths (``workflows/messages/<run>/<n>.json``). A local write goes
to a temp file and is renamed into place, so a reader never sees half a payload;
S3 puts are whole by nature.
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from typing import Any

import fsspec

from controller.errors import StoreError


class PayloadStore:
    def __init__(self, root: str, options: dict[str, Any] | None = None) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(root, **(options or {}))
        self.protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.url = root
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot open payload store {root}: {exc}") from exc

    def _path(self, key: str) -> str:
        norm = posixpath.normpath(key)
        if norm.startswith(("/", "..")) or norm == ".":
            raise StoreError(f"payload key {key!r} escapes the store")
        return posixpath.join(self.root, norm)

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        try:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            if self.protocol in ("file", "local"):
                tmp = f"{path}.{uuid.uuid4().hex}.tmp"
                with self.fs.open(tmp, "wb") as f:
                    f.write(data)
                self.fs.mv(tmp, path)
            else:
                self.fs.pipe_file(path, data)
        except OSError as exc:
            raise StoreError(f"cannot write payload {key}: {exc}") from exc
        return key

    def get(self, key: str) -> bytes:
        try:
            data: bytes = self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StoreError(f"cannot read payload {key}: {exc}") from exc
        return data

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        root = self.root.rstrip("/") + "/"
        return sorted(p[len(root) :] if p.startswith(root) else p for p in found if not p.endswith(".tmp"))
