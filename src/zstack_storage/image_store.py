"""The image store of the management node: fetching an image file and finding out what it is.

Blocking functions, run in a worker thread (``asyncio.to_thread``). :func:`fetch` streams an
http(s) URL with ``requests`` (or copies a local file) into a temporary file, hashing as it goes,
checks the size against ``Content-Length`` and the checksums the user gave, and reports progress;
:func:`inspect` reads the real format and virtual size (``qemu-img info``, or the qcow2 header
where qemu-img is missing) and refuses a file that is not what the user declared. The caller
renames the file into place only when both passed, and removes it otherwise.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

import attrs

from zstack_core.errors import ZStackError

from . import qemu_img
from .errors import ImageErrors

__all__ = ["Fetched", "FORMATS", "MEDIA_TYPES", "fetch", "inspect", "local_path_of"]

FORMATS = ("qcow2", "raw", "iso")
MEDIA_TYPES = ("RootVolumeTemplate", "DataVolumeTemplate", "ISO")
CHUNK = 1 << 20
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 60.0


class Cancelled(Exception):
    """The download was asked to stop (the node is stopping, or the API job was cancelled)."""


@attrs.frozen(kw_only=True)
class Fetched:
    size: int
    md5sum: str
    sha256sum: str


def local_path_of(url: str) -> Path | None:
    """The file a ``file://`` URL or an absolute path names; None for any other URL."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ImageErrors.exc("1000", f"a file URL must name a file of this machine: {url}")
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and url.startswith("/"):
        return Path(url)
    return None


def _copy(chunks: Callable[[], Iterable[bytes]], dest: Path, total: int | None, progress: Callable[[int], None],
          cancel: threading.Event) -> Fetched:
    md5, sha256, n, last = hashlib.md5(), hashlib.sha256(), 0, -1
    with open(dest, "wb") as out:
        for chunk in chunks():
            if cancel.is_set():
                raise Cancelled()
            if not chunk:
                continue
            out.write(chunk)
            md5.update(chunk)
            sha256.update(chunk)
            n += len(chunk)
            if total:
                pct = min(99, n * 100 // total)  # 100 once verified and in place
                if pct != last:
                    progress(pct)
                    last = pct
        out.flush()
        os.fsync(out.fileno())
    if cancel.is_set():
        raise Cancelled()
    if total is not None and n != total:
        raise ImageErrors.exc("1003", f"got {n} bytes but the source announced {total}")
    return Fetched(size=n, md5sum=md5.hexdigest(), sha256sum=sha256.hexdigest())


def _check_space(dest: Path, total: int | None) -> None:
    if total is not None and shutil.disk_usage(dest.parent).free < total:
        raise ImageErrors.exc("1001", f"the image store {dest.parent} has less than the {total} bytes the image needs")


def fetch(url: str, dest: Path, progress: Callable[[int], None], cancel: threading.Event) -> Fetched:
    """Write the image at ``url`` to ``dest``; raise ``ZStackError`` (IMAGE) or :class:`Cancelled`."""
    local = local_path_of(url)
    if local is not None:
        if not local.is_file():
            raise ImageErrors.exc("1001", f"{local} is not a file on the management node")
        total = local.stat().st_size
        _check_space(dest, total)
        with open(local, "rb") as src:
            return _copy(lambda: iter(lambda: src.read(CHUNK), b""), dest, total, progress, cancel)
    import requests  # here, not at import: the node's start-up would pay for it (benchmarks)

    try:
        with requests.get(url, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as resp:
            if resp.status_code != 200:
                raise ImageErrors.exc("1001", f"GET {url} answered {resp.status_code} {resp.reason}")
            length = resp.headers.get("Content-Length")
            announced = int(length) if length and length.isdigit() else None
            _check_space(dest, announced)
            return _copy(lambda: resp.iter_content(CHUNK), dest, announced, progress, cancel)
    except ZStackError:
        raise
    except Cancelled:
        raise
    except requests.RequestException as exc:
        raise ImageErrors.exc("1001", f"GET {url}: {type(exc).__name__}: {exc}") from None


def verify_checksums(got: Fetched, md5sum: str | None, sha256sum: str | None) -> None:
    if md5sum and got.md5sum != md5sum.lower():
        raise ImageErrors.exc("1002", f"md5 of the downloaded file is {got.md5sum}, expected {md5sum}")
    if sha256sum and got.sha256sum != sha256sum.lower():
        raise ImageErrors.exc("1002", f"sha256 of the downloaded file is {got.sha256sum}, expected {sha256sum}")


def _sniff(path: Path) -> tuple[str, int, bool]:
    """(format, virtual size, has a backing file) from the file's header, without qemu-img."""
    with open(path, "rb") as f:
        head = f.read(32)
    if len(head) >= 32 and head[:4] == b"QFI\xfb":
        backing_offset = struct.unpack(">Q", head[8:16])[0]
        return "qcow2", struct.unpack(">Q", head[24:32])[0], backing_offset != 0
    return "raw", path.stat().st_size, False


def _is_iso9660(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0x8001)
        return f.read(5) == b"CD001"


def inspect(path: Path, declared: str) -> int:
    """The virtual size of the image at ``path``, after checking it really is ``declared``."""
    if qemu_img.available():
        facts = qemu_img.info(str(path))
        actual, virtual = str(facts.get("format")), int(facts.get("virtual-size", 0))
        backing = bool(facts.get("backing-filename"))
    else:
        actual, virtual, backing = _sniff(path)
    expected = "raw" if declared == "iso" else declared
    if actual != expected:
        raise ImageErrors.exc("1004", f"the file is {actual}, not the declared {declared}")
    if backing:
        # A template must stand alone: a backing file would point into the image store host.
        raise ImageErrors.exc("1004", "the qcow2 image has a backing file; flatten it first (qemu-img convert)")
    if declared == "iso" and not _is_iso9660(path):
        raise ImageErrors.exc("1004", "the file has no ISO 9660 signature, so it is not an iso")
    if virtual <= 0:
        raise ImageErrors.exc("1004", "the image is empty")
    return virtual
