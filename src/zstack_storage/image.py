"""Images in the management node's image store: add (download), delete, recover, expunge.

``AddImage`` is long-running. Its row exists as ``Downloading`` while the file is fetched into
``<store>/<uuid>.part`` in a worker thread; only a file that arrived whole, matched its checksums
and is the declared format is renamed to ``<store>/<uuid>.<format>`` and the row made ``Ready``.
Any failure, a cancelled job, or the node stopping removes the partial file and the row: no
``Ready`` image without its file, and no file without its image. A node that died mid-download
cleans up at its next start.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from zstack_core import ApiInterceptor, handles, invalid_argument
from zstack_core.db import new_uuid
from zstack_core.errors import ZStackError
from zstack_core.messages import APIMessage
from zstack_core.ownership import disown_sync, own_sync

from . import capacity, image_store
from .api import APIAddImageMsg, APIDeleteImageMsg, APIExpungeImageMsg, APIImageEvent, APIRecoverImageMsg
from .base import StorageBase, not_found
from .errors import ImageErrors
from .models import ImageCacheVO, ImageVO, VolumeVO

log = logging.getLogger("zstack.storage.image")
T = TypeVar("T")

IMAGE_STORE_PATH = "storage.image_store_path"
"""Global property: the image store directory (default ``<data_dir>/images``)."""
IMAGE_DELETION_POLICY = ("image", "deletionPolicy")
_HEX = {"md5sum": re.compile(r"[0-9a-fA-F]{32}"), "sha256sum": re.compile(r"[0-9a-fA-F]{64}")}


class AddImageInterceptor(ApiInterceptor):
    """Refuses a malformed ``AddImage`` before a job is made for it."""

    name = "AddImageInterceptor"
    messages = (APIAddImageMsg,)

    async def intercept(self, msg: APIMessage, node: Any) -> APIMessage:
        assert isinstance(msg, APIAddImageMsg)
        if not msg.name.strip():
            raise invalid_argument("name cannot be empty", "name")
        if msg.format not in image_store.FORMATS:
            raise invalid_argument(f"format must be one of {', '.join(image_store.FORMATS)}, not {msg.format!r}", "format")
        if msg.media_type is not None and msg.media_type not in image_store.MEDIA_TYPES:
            raise invalid_argument(f"mediaType must be one of {', '.join(image_store.MEDIA_TYPES)}", "mediaType")
        if (msg.format == "iso") != ((msg.media_type or ("ISO" if msg.format == "iso" else "")) == "ISO"):
            raise invalid_argument("format iso goes with mediaType ISO, and only with it", "mediaType")
        for field in ("md5sum", "sha256sum"):
            value = getattr(msg, field)
            if value is not None and not _HEX[field].fullmatch(value):
                raise invalid_argument(f"{field} must be {_HEX[field].pattern.split('{')[1][:-1]} hex digits", field)
        scheme = urlparse(msg.url).scheme
        local = image_store.local_path_of(msg.url) if scheme in ("", "file") else None
        if scheme not in ("http", "https", "file", "") or (scheme == "" and local is None):
            raise invalid_argument(f"url must be http(s)://, file:// or an absolute path, not {msg.url!r}", "url")
        if scheme in ("http", "https") and not urlparse(msg.url).hostname:
            raise invalid_argument(f"url {msg.url!r} names no host", "url")
        if local is not None and not local.is_file():
            raise ImageErrors.exc("1001", f"{local} is not a file on the management node")
        return msg


class ImageHandlers(StorageBase):

    downloads: dict[str, threading.Event]
    """Cancel flags of the downloads in progress, by image UUID."""

    def image_dir(self) -> Path:
        configured = self.node.properties[IMAGE_STORE_PATH]
        return Path(configured) if configured else self.node.data_dir / "images"

    def cancel_downloads(self) -> None:
        for flag in self.downloads.values():
            flag.set()

    async def sweep_interrupted_downloads(self) -> None:
        """Remove what a node that stopped mid-download left in this image store."""
        store = self.image_dir()

        def sweep() -> list[str]:
            gone = []
            for row in ImageVO.select().where(ImageVO.status == "Downloading"):
                if row.install_path and Path(row.install_path).parent == store:
                    ImageVO.delete().where(ImageVO.uuid == row.uuid).execute()
                    disown_sync(row.uuid)
                    self.node.tags.delete_sync(row.uuid)
                    gone.append(row.uuid)
            return gone

        for uuid in await self.node.db.atomic(sweep):
            log.warning("image %s was still downloading when the node stopped; removed", uuid)
        if store.is_dir():
            for part in store.glob("*.part"):
                part.unlink(missing_ok=True)

    async def _in_thread(self, fn: Callable[[], T], cancel: threading.Event) -> T:
        """``fn()`` in a worker thread; if this task is cancelled, stop the thread first."""
        fut = asyncio.ensure_future(asyncio.to_thread(fn))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            cancel.set()
            await asyncio.wait([fut])
            if not fut.cancelled():
                fut.exception()  # consumed: the cancellation is what the caller sees
            raise

    async def _report(self, job_id: str | None, pct: list[int]) -> None:
        """Copy the worker's progress into the job until cancelled."""
        last = -1
        while True:
            if job_id and pct[0] != last:
                last = pct[0]
                await self.node.api.report_progress(job_id, last)
            await asyncio.sleep(0.1)

    @handles(APIAddImageMsg)
    async def add_image(self, msg: APIAddImageMsg) -> APIImageEvent:
        fmt = msg.format
        media_type = msg.media_type or ("ISO" if fmt == "iso" else "RootVolumeTemplate")
        uuid = new_uuid()
        store = self.image_dir()
        store.mkdir(parents=True, exist_ok=True)
        final, part = store / f"{uuid}.{fmt}", store / f"{uuid}.part"

        def create() -> None:
            ImageVO.create(uuid=uuid, name=msg.name, description=msg.description, url=msg.url, format=fmt,
                           media_type=media_type, platform=msg.platform, status="Downloading",
                           install_path=str(final))
            own_sync(uuid, "Image", msg.account_uuid)
            self.node.tags.create_sync(uuid, "Image", msg.system_tags)

        await self.node.db.atomic(create)
        cancel = threading.Event()
        self.downloads[uuid] = cancel
        pct = [0]

        def progress(p: int) -> None:
            pct[0] = p

        def work() -> tuple[image_store.Fetched, int]:
            got = image_store.fetch(msg.url, part, progress, cancel)
            image_store.verify_checksums(got, msg.md5sum, msg.sha256sum)
            virtual = image_store.inspect(part, fmt)
            part.replace(final)
            return got, virtual

        reporter = asyncio.ensure_future(self._report(msg.headers.get("job_id"), pct))
        try:
            got, virtual = await self._in_thread(work, cancel)
        except BaseException as exc:
            await self._forget_download(uuid, part, final)
            if isinstance(exc, image_store.Cancelled):
                raise ImageErrors.exc("1001", f"the download of {msg.url} was interrupted: the node is stopping") from None
            raise
        finally:
            reporter.cancel()
            self.downloads.pop(uuid, None)

        def ready() -> ImageVO:
            ImageVO.update(status="Ready", size=virtual, actual_size=got.size, md5sum=got.md5sum,
                           sha256sum=got.sha256sum).where(ImageVO.uuid == uuid).execute()
            return ImageVO.get(ImageVO.uuid == uuid)

        row = await self.node.db.atomic(ready)
        return APIImageEvent(inventory=row.to_inventory())

    async def _forget_download(self, uuid: str, *files: Path) -> None:
        for f in files:
            f.unlink(missing_ok=True)

        def drop() -> None:
            ImageVO.delete().where(ImageVO.uuid == uuid).execute()
            disown_sync(uuid)
            self.node.tags.delete_sync(uuid)

        await asyncio.shield(self.node.db.atomic(drop))

    # -- delete / recover / expunge ------------------------------------------------------------

    async def _transition(self, uuid: str, field: str, expected: str, new: str) -> None:
        def move() -> None:
            row = ImageVO.get_or_none(ImageVO.uuid == uuid)
            if row is None:
                raise not_found("image", uuid, field)
            if row.status != expected:
                raise ImageErrors.exc("1005", f"image {uuid} is {row.status}, not {expected}")
            ImageVO.update(status=new).where((ImageVO.uuid == uuid) & (ImageVO.status == expected)).execute()

        await self.node.db.atomic(move)

    @handles(APIDeleteImageMsg)
    async def delete_image(self, msg: APIDeleteImageMsg) -> APIImageEvent:
        await self._transition(msg.uuid, "uuid", "Ready", "Deleted")
        if self.node.configs.get(*IMAGE_DELETION_POLICY) == "Direct":
            await self._expunge(msg.uuid)
        return APIImageEvent()

    @handles(APIRecoverImageMsg)
    async def recover_image(self, msg: APIRecoverImageMsg) -> APIImageEvent:
        await self._transition(msg.image_uuid, "imageUuid", "Deleted", "Ready")
        return APIImageEvent(inventory=await self.image(msg.image_uuid))

    @handles(APIExpungeImageMsg)
    async def expunge_image(self, msg: APIExpungeImageMsg) -> APIImageEvent:
        image = await self.image(msg.image_uuid)
        if image.status != "Deleted":
            raise ImageErrors.exc("1005", f"image {image.uuid} is {image.status}; delete it before expunging it")
        await self._expunge(image.uuid)
        return APIImageEvent()

    async def _expunge(self, uuid: str) -> None:
        """Remove the image file, its caches no root volume uses, and its row."""
        path = await self.image_path(uuid)
        await self._drop_unused_caches(uuid)
        if path:
            await asyncio.to_thread(Path(path).unlink, missing_ok=True)

        def drop() -> None:
            ImageVO.delete().where(ImageVO.uuid == uuid).execute()
            disown_sync(uuid)
            self.node.tags.delete_sync(uuid)

        await self.node.db.atomic(drop)

    async def _drop_unused_caches(self, image_uuid: str) -> None:
        def unused() -> list[ImageCacheVO]:
            out = []
            for cache in ImageCacheVO.select().where(ImageCacheVO.image_uuid == image_uuid):
                used = VolumeVO.select().where((VolumeVO.root_image_uuid == image_uuid)
                                               & (VolumeVO.primary_storage_uuid == cache.primary_storage_uuid)
                                               & (VolumeVO.host_uuid == cache.host_uuid)).exists()
                if not used:
                    out.append(cache)
            return out

        for cache in await self.node.db.run(unused):
            try:
                ps = await self.ps(cache.primary_storage_uuid)
                host = await self.host(cache.host_uuid)
                if cache.install_path:
                    await self.factory(ps.type).delete_volume(self.node, ps, host, cache.install_path)
            except ZStackError as exc:
                log.warning("image cache %s stays on host %s: %s", cache.install_path, cache.host_uuid, exc.error)
                continue
            await self.node.db.atomic(capacity.drop_cache_sync, cache.id)
