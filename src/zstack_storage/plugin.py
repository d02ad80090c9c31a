"""Hook implementations of zstack-storage."""

from __future__ import annotations

from collections.abc import Sequence

from zstack_core import ErrorCodeSpace, ManagementNode, Service, hookimpl

PrimaryStorageErrors = ErrorCodeSpace(
    prefix="PS",
    codes={"1000": "invalid primary storage operation", "1001": "not enough primary storage capacity"},
)
VolumeErrors = ErrorCodeSpace(prefix="VOLUME", codes={"1000": "invalid volume operation"})
ImageErrors = ErrorCodeSpace(
    prefix="IMAGE",
    codes={"1000": "invalid image operation", "1001": "image download failed", "1002": "image checksum mismatch"},
)


class StorageService(Service):
    """Primary storage, images and volumes."""

    id = "storage"
    start_order = 30


@hookimpl
def zstack_error_codes() -> Sequence[ErrorCodeSpace]:
    return [PrimaryStorageErrors, VolumeErrors, ImageErrors]


@hookimpl
def zstack_services(node: ManagementNode) -> Sequence[Service]:
    return [StorageService()]
