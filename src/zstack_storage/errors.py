"""The error codes of zstack-storage: ``PS`` (primary storage), ``VOLUME`` and ``IMAGE``."""

from __future__ import annotations

from zstack_core import ErrorCodeSpace

__all__ = ["ImageErrors", "PrimaryStorageErrors", "VolumeErrors"]

PrimaryStorageErrors = ErrorCodeSpace(
    prefix="PS",
    codes={
        "1000": "invalid primary storage operation",
        "1001": "not enough primary storage capacity",
        "1002": "primary storage operation on the host failed",
        "1003": "primary storage is in use",
        "1004": "no primary storage can serve this host",
        "1005": "primary storage state does not allow this",
    },
)
VolumeErrors = ErrorCodeSpace(
    prefix="VOLUME",
    codes={
        "1000": "invalid volume operation",
        "1001": "volume state does not allow this",
        "1002": "VM state does not allow this",
        "1003": "too many data volumes",
        "1004": "not supported here",
        "1005": "volume is attached to a VM",
        "1006": "volume operation failed",
    },
)
ImageErrors = ErrorCodeSpace(
    prefix="IMAGE",
    codes={
        "1000": "invalid image operation",
        "1001": "image download failed",
        "1002": "image checksum mismatch",
        "1003": "image size mismatch",
        "1004": "image format mismatch",
        "1005": "image state does not allow this",
    },
)
