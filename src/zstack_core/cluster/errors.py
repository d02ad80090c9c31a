"""The cluster layer's error codes (prefix ``MN``, for management node)."""

from __future__ import annotations

from ..errors import ErrorCodeSpace

__all__ = ["ClusterErrors"]

ClusterErrors = ErrorCodeSpace(
    prefix="MN",
    codes={
        "1000": "the owning management node is unreachable",
        "1001": "the management node handling the request was lost",
        "1002": "node-to-node request refused: bad or missing cluster signature",
        "1003": "the message cannot cross to another management node",
        "1004": "unreadable node-to-node request",
        "1005": "the management node left the cluster",
    },
    http_status={"1000": 503, "1001": 503, "1002": 401, "1003": 500, "1004": 400, "1005": 503},
)
"""``MN.1000``: the owner could not be reached (nothing was delivered; the ring is updated).
``MN.1001``: the connection to the owner broke while it handled the message (its outcome is
unknown). ``MN.1005``: a job's node died before the job ended."""
