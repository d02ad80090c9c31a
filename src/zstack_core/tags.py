"""System tags: facts and options attached to resources by pattern (ZStack's
``PatternedSystemTag``).

A plugin declares patterns bound to a resource type, with ``{token}`` placeholders:
``qemu-img::version::{version}`` on ``Host``. Tags are stored per resource; create APIs accept
``systemTags`` and refuse one that matches no pattern declared for the resource they create;
services read tokens back (``tokens(host_uuid, QEMU_IMG_VERSION)`` -> ``{"version": "7.2.0"}``);
queries filter by tag.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import peewee

from .db import BaseModel, Database, new_uuid, utcnow
from .errors import invalid_argument

__all__ = ["PatternedSystemTag", "SystemTagVO", "SystemTags"]

_TOKEN = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_TAG_LENGTH = 1024
"""The longest tag the ``system_tag`` table holds."""


@attrs.frozen(kw_only=True)
class PatternedSystemTag:
    """A tag pattern, returned from ``zstack_system_tags``.

    ``pattern`` uses ``{name}`` for tokens (a token matches any text without ``::``);
    ``resource_type`` is the resource it may be attached to (``Host``, ``VmInstance``).
    """

    pattern: str
    resource_type: str
    description: str = ""
    regex: re.Pattern[str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        parts, last = [], 0
        for m in _TOKEN.finditer(self.pattern):
            parts.append(re.escape(self.pattern[last:m.start()]))
            parts.append(f"(?P<{m.group(1)}>(?:(?!::).)+)")
            last = m.end()
        parts.append(re.escape(self.pattern[last:]))
        object.__setattr__(self, "regex", re.compile("".join(parts)))

    @property
    def token_names(self) -> list[str]:
        return _TOKEN.findall(self.pattern)

    @property
    def prefix(self) -> str:
        """The literal text before the first token (used to find tags in the database)."""
        m = _TOKEN.search(self.pattern)
        return self.pattern if m is None else self.pattern[: m.start()]

    def matches(self, tag: str) -> bool:
        return self.regex.fullmatch(tag) is not None

    def tokens(self, tag: str) -> dict[str, str] | None:
        m = self.regex.fullmatch(tag)
        return None if m is None else m.groupdict()

    def instantiate(self, **tokens: Any) -> str:
        """The tag with ``tokens`` filled in: ``QEMU_IMG_VERSION.instantiate(version="7.2")``."""
        missing = set(self.token_names) - set(tokens)
        if missing:
            raise ValueError(f"tag {self.pattern} needs tokens {sorted(missing)}")
        tag = _TOKEN.sub(lambda m: str(tokens[m.group(1)]), self.pattern)
        if not self.matches(tag):
            raise ValueError(f"a token of {self.pattern} contains '::': {tokens}")
        return tag


@attrs.frozen(kw_only=True)
class SystemTagInventory:
    uuid: str
    resource_uuid: str
    resource_type: str
    tag: str


class SystemTagVO(BaseModel):
    INVENTORY = SystemTagInventory

    uuid = peewee.CharField(primary_key=True, max_length=32, default=new_uuid)
    resource_uuid = peewee.CharField(max_length=32, index=True)
    resource_type = peewee.CharField(max_length=64)
    tag = peewee.CharField(max_length=MAX_TAG_LENGTH, index=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "system_tag"
        indexes = ((("resource_uuid", "tag"), True),)


class SystemTags:
    """Declared patterns and the tags stored for resources."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.patterns: list[PatternedSystemTag] = []
        self.owner: dict[str, str] = {}

    def declare(self, tags: Sequence[tuple[str, PatternedSystemTag]]) -> None:
        for plugin, tag in tags:
            key = f"{tag.resource_type}:{tag.pattern}"
            if key in self.owner:
                raise ValueError(f"system tag {tag.pattern} on {tag.resource_type} is declared by both plugin "
                                 f"{self.owner[key]!r} and plugin {plugin!r}")
            self.owner[key] = plugin
            self.patterns.append(tag)

    def pattern_of(self, tag: str, resource_type: str | None = None) -> PatternedSystemTag | None:
        for p in self.patterns:
            if (resource_type is None or p.resource_type == resource_type) and p.matches(tag):
                return p
        return None

    def validate(self, tags: Iterable[str], resource_type: str | None) -> None:
        """Refuse (``SYS.1007``) a tag that matches no pattern declared for ``resource_type``."""
        for i, tag in enumerate(tags):
            if not isinstance(tag, str) or not tag:
                raise invalid_argument(f"system tag #{i} must be a non-empty string", f"$.systemTags[{i}]")
            if len(tag) > MAX_TAG_LENGTH:  # SQLite would store it, PostgreSQL and MySQL would not
                raise invalid_argument(f"system tag #{i} is {len(tag)} characters long; the limit is "
                                       f"{MAX_TAG_LENGTH}", f"$.systemTags[{i}]")
            if self.pattern_of(tag, resource_type) is not None:
                continue
            other = self.pattern_of(tag)
            if other is not None and resource_type is not None:
                raise invalid_argument(f"system tag {tag!r} belongs to {other.resource_type} resources, "
                                       f"not {resource_type}", f"$.systemTags[{i}]")
            declared = sorted(p.pattern for p in self.patterns if resource_type is None or p.resource_type == resource_type)
            raise invalid_argument(
                f"system tag {tag!r} matches no declared pattern"
                + (f" for {resource_type}" if resource_type else "")
                + (f"; declared: {', '.join(declared)}" if declared else "; none are declared"),
                f"$.systemTags[{i}]")

    # -- storage (the *_sync methods run in a database thread, e.g. inside a service's
    #    transaction, so a resource and its tags are written together) -------------------------

    def create_sync(self, resource_uuid: str, resource_type: str, tags: Iterable[str]) -> None:
        tags = list(tags)
        self.validate(tags, resource_type)
        for tag in tags:
            SystemTagVO.insert(resource_uuid=resource_uuid, resource_type=resource_type, tag=tag).on_conflict_ignore().execute()

    def replace_sync(self, resource_uuid: str, resource_type: str, pattern: PatternedSystemTag, tag: str) -> None:
        """Set the one tag of ``pattern`` on a resource (a fact such as a version that changes)."""
        self.delete_sync(resource_uuid, pattern)
        self.create_sync(resource_uuid, resource_type, [tag])

    def delete_sync(self, resource_uuid: str, pattern: PatternedSystemTag | None = None) -> int:
        q = SystemTagVO.delete().where(SystemTagVO.resource_uuid == resource_uuid)
        if pattern is None:
            return int(q.execute())
        rows = SystemTagVO.select().where((SystemTagVO.resource_uuid == resource_uuid)
                                          & SystemTagVO.tag.startswith(pattern.prefix))
        ids = [r.uuid for r in rows if pattern.matches(r.tag)]
        if not ids:
            return 0
        return int(SystemTagVO.delete().where(SystemTagVO.uuid.in_(ids)).execute())

    def tags_sync(self, resource_uuid: str) -> list[str]:
        return [r.tag for r in SystemTagVO.select(SystemTagVO.tag).where(SystemTagVO.resource_uuid == resource_uuid)
                .order_by(SystemTagVO.created_at, SystemTagVO.tag)]

    def tokens_sync(self, resource_uuid: str, pattern: PatternedSystemTag) -> dict[str, str] | None:
        for tag in self.tags_sync(resource_uuid):
            tokens = pattern.tokens(tag)
            if tokens is not None:
                return tokens
        return None

    async def create(self, resource_uuid: str, resource_type: str, tags: Iterable[str]) -> None:
        tags = list(tags)
        self.validate(tags, resource_type)
        await self.db.atomic(self.create_sync, resource_uuid, resource_type, tags)

    async def replace(self, resource_uuid: str, resource_type: str, pattern: PatternedSystemTag, tag: str) -> None:
        await self.db.atomic(self.replace_sync, resource_uuid, resource_type, pattern, tag)

    async def delete(self, resource_uuid: str, pattern: PatternedSystemTag | None = None) -> int:
        return await self.db.atomic(self.delete_sync, resource_uuid, pattern)

    async def tags(self, resource_uuid: str) -> list[str]:
        return await self.db.run(self.tags_sync, resource_uuid)

    async def tokens(self, resource_uuid: str, pattern: PatternedSystemTag) -> dict[str, str] | None:
        """The tokens of the first tag of ``pattern`` on the resource, or None."""
        return await self.db.run(self.tokens_sync, resource_uuid, pattern)
