"""Cascading deletes (ZStack's Cascade framework)."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class CascadeAction:
    """A parent is going away; plugins owning its children act on them.

    ``mode`` is ``check`` (veto by raising), ``delete`` (delete children, may fail) or ``force``
    (delete children whatever it takes).
    """

    parent_type: str
    """The resource type being deleted, e.g. ``Zone``, ``Cluster``, ``Host``."""
    parent_uuids: list[str]
    mode: str = "delete"
