"""Global configs: runtime settings declared by plugins, stored in the database.

As in ZStack: each config has a category, a name, a type, a default and validators; users change
it with ``UpdateGlobalConfig`` (validated first: a refused value changes nothing), put it back with
``ResetGlobalConfig``; after a change, ``zstack_global_config_changed`` tells every plugin.
A config marked overridable (``resource_types``) can also be set per resource, and is read through
the chain resource -> cluster -> zone -> global (``kvm/reservedMemory`` is the seed's example).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import peewee

from .db import BaseModel, Database, upsert, utcnow
from .errors import SysErrors, ZStackError, invalid_argument
from .units import parse_size

if TYPE_CHECKING:
    from .plugins import Hooks

__all__ = ["Choices", "Custom", "GlobalConfig", "GlobalConfigs", "Range", "Regex", "Validator"]

log = logging.getLogger("zstack.globalconfig")


class Validator(abc.ABC):
    """Checks a parsed value; raises ``ValueError`` with a message a user can act on."""

    @abc.abstractmethod
    def __call__(self, value: Any) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {}


@attrs.frozen
class Range(Validator):
    min: float | None = None
    max: float | None = None

    def __call__(self, value: Any) -> None:
        if self.min is not None and value < self.min:
            raise ValueError(f"{value} is below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{value} is above the maximum {self.max}")

    def describe(self) -> dict[str, Any]:
        return {"min": self.min, "max": self.max}


@attrs.frozen
class Choices(Validator):
    values: tuple[Any, ...]

    def __call__(self, value: Any) -> None:
        if value not in self.values:
            raise ValueError(f"{value!r} is not one of {', '.join(map(str, self.values))}")

    def describe(self) -> dict[str, Any]:
        return {"validValues": list(self.values)}


@attrs.frozen
class Regex(Validator):
    pattern: str

    def __call__(self, value: Any) -> None:
        if not re.fullmatch(self.pattern, str(value)):
            raise ValueError(f"{value!r} does not match {self.pattern}")

    def describe(self) -> dict[str, Any]:
        return {"regex": self.pattern}


@attrs.frozen
class Custom(Validator):
    check: Callable[[Any], None]
    description: str = ""

    def __call__(self, value: Any) -> None:
        self.check(value)

    def describe(self) -> dict[str, Any]:
        return {"description": self.description} if self.description else {}


_TYPES = ("str", "int", "float", "bool", "size")


@attrs.frozen(kw_only=True)
class GlobalConfig:
    """A runtime setting, returned from ``zstack_global_configs``.

    ``type`` is ``str``, ``int``, ``float``, ``bool`` or ``size`` (``512M``; read as bytes).
    ``resource_types`` lists where it can be overridden (``("Host", "Cluster", "Zone")``).
    """

    category: str
    name: str
    type: str = "str"
    default: Any = None
    description: str = ""
    validators: Sequence[Validator] = ()
    resource_types: Sequence[str] = ()

    def __attrs_post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"global config {self.identity}: type must be one of {_TYPES}")
        self.parse(self.default)  # a bad default is the plugin's bug: fail at declaration

    @property
    def identity(self) -> str:
        return f"{self.category}/{self.name}"

    def parse(self, value: Any) -> Any:
        """The typed value of ``value`` (text from the database or an API), validated."""
        try:
            typed = self._convert(value)
            for validator in self.validators:
                validator(typed)
        except (ValueError, TypeError) as exc:
            raise invalid_argument(f"invalid value for global config {self.identity}: {exc}", "value") from None
        return typed

    def _convert(self, value: Any) -> Any:
        if isinstance(value, bool) and self.type not in ("bool", "str"):
            raise ValueError(f"expected {self.type}, got a boolean")
        if self.type == "str":
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {value!r}")
            return value
        if self.type == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"expected an integer, got {value!r}")
            return int(value) if not isinstance(value, str) else int(value.strip())
        if self.type == "float":
            number = float(value)
            if not math.isfinite(number):  # NaN would slip past every Range (all comparisons false)
                raise ValueError(f"expected a finite number, got {value!r}")
            return number
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "false"):
                return text == "true"
            raise ValueError(f"expected true or false, got {value!r}")
        return parse_size(value)

    @staticmethod
    def to_text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)


@attrs.frozen(kw_only=True)
class GlobalConfigInventory:
    category: str
    name: str
    value: str
    default_value: str
    description: str = ""


class GlobalConfigVO(BaseModel):
    INVENTORY = GlobalConfigInventory

    id = peewee.AutoField()
    category = peewee.CharField(max_length=64)
    name = peewee.CharField(max_length=128)
    value = peewee.TextField()
    default_value = peewee.TextField()
    description = peewee.TextField(default="")
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "global_config"
        indexes = ((("category", "name"), True),)


class ResourceConfigVO(BaseModel):
    resource_uuid = peewee.CharField(max_length=32)
    resource_type = peewee.CharField(max_length=64)
    category = peewee.CharField(max_length=64)
    name = peewee.CharField(max_length=128)
    value = peewee.TextField()
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "resource_config"
        primary_key = peewee.CompositeKey("resource_uuid", "category", "name")


class GlobalConfigs:
    """The node's view of every declared config. Reads come from memory; writes go to the
    database first, then memory, then the change listeners."""

    def __init__(self, db: Database, hooks: Hooks) -> None:
        self.db = db
        self.hooks = hooks
        self.declared: dict[tuple[str, str], GlobalConfig] = {}
        self.owner: dict[tuple[str, str], str] = {}
        self._values: dict[tuple[str, str], Any] = {}
        self._overrides: dict[tuple[str, str, str], Any] = {}
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}
        self._writes = 0
        """Local writes started (+1) and finished (+1): :meth:`refresh` ignores a read that one
        overlapped, so it never reports a local change twice nor puts back an older value."""

    def declare(self, configs: Sequence[tuple[str, GlobalConfig]]) -> None:
        for plugin, cfg in configs:
            key = (cfg.category, cfg.name)
            if key in self.declared:
                raise ValueError(f"global config {cfg.identity} is declared by both plugin "
                                 f"{self.owner[key]!r} and plugin {plugin!r}")
            self.declared[key] = cfg
            self.owner[key] = plugin

    def load_sync(self) -> None:
        """Store defaults of configs new to the database; read every value (database thread)."""
        stored = {(r.category, r.name): r for r in GlobalConfigVO.select()}
        for key, cfg in self.declared.items():
            default = GlobalConfig.to_text(cfg.default)
            row = stored.get(key)
            if row is None:
                GlobalConfigVO.insert(category=cfg.category, name=cfg.name, value=default,
                                      default_value=default, description=cfg.description).on_conflict_ignore().execute()
                self._values[key] = cfg.parse(cfg.default)
                continue
            if row.default_value != default or row.description != cfg.description:
                GlobalConfigVO.update(default_value=default, description=cfg.description).where(
                    (GlobalConfigVO.category == cfg.category) & (GlobalConfigVO.name == cfg.name)).execute()
            try:
                self._values[key] = cfg.parse(row.value)
            except ZStackError:  # a value a newer validator refuses: fall back, keep the row
                self._values[key] = cfg.parse(cfg.default)
        for r in ResourceConfigVO.select():
            cfg = self.declared.get((r.category, r.name))
            if cfg is None:
                continue
            try:
                self._overrides[(r.resource_uuid, r.category, r.name)] = cfg.parse(r.value)
            except ZStackError as exc:  # as above: the resource reads the next level; the row stays
                log.warning("ignoring the override of %s on %s: %s", cfg.identity, r.resource_uuid, exc.error.details)

    def config(self, category: str, name: str) -> GlobalConfig:
        cfg = self.declared.get((category, name))
        if cfg is None:
            known = sorted(f"{c}/{n}" for c, n in self.declared)
            import difflib

            close = difflib.get_close_matches(f"{category}/{name}", known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise SysErrors.exc("1004", f"no global config {category}/{name}{hint}", field="name")
        return cfg

    def get(self, category: str, name: str) -> Any:
        """The current value (typed)."""
        self.config(category, name)
        return self._values[(category, name)]

    def resolve(self, category: str, name: str, chain: Sequence[str | None]) -> Any:
        """The value for a resource: the first override along ``chain`` (e.g. host, cluster,
        zone UUIDs), else the global value."""
        self.config(category, name)
        for resource_uuid in chain:
            if resource_uuid is not None:
                value = self._overrides.get((resource_uuid, category, name))
                if value is not None:
                    return value
        return self._values[(category, name)]

    def resource_value(self, category: str, name: str, resource_uuid: str) -> Any | None:
        return self._overrides.get((resource_uuid, category, name))

    async def update(self, category: str, name: str, value: Any) -> Any:
        cfg = self.config(category, name)
        typed = cfg.parse(value)  # refused values raise here, before anything is written
        async with self._lock(category, name):
            return await self._update(category, name, typed)

    def _lock(self, *key: str) -> asyncio.Lock:
        """One change of a config (or of one resource's override) at a time, from store to
        listeners, so the stored value, the one in memory and the ``(old, new)`` listeners hear
        stay in step. A listener must not change the config it is told about (it would wait
        for itself)."""
        return self._locks.setdefault(key, asyncio.Lock())

    async def _update(self, category: str, name: str, typed: Any) -> Any:
        old = self._values[(category, name)]

        def write() -> None:
            GlobalConfigVO.update(value=GlobalConfig.to_text(typed), updated_at=utcnow()).where(
                (GlobalConfigVO.category == category) & (GlobalConfigVO.name == name)).execute()

        self._writes += 1
        try:
            await self.db.atomic(write)
            self._values[(category, name)] = typed
        finally:
            self._writes += 1
        await self.hooks.global_config_changed(category, name, old, typed, None)
        return typed

    async def reset(self, category: str, name: str) -> Any:
        return await self.update(category, name, self.config(category, name).default)

    async def update_resource(self, category: str, name: str, resource_uuid: str, resource_type: str, value: Any) -> Any:
        cfg = self.config(category, name)
        if resource_type not in cfg.resource_types:
            allowed = ", ".join(cfg.resource_types) or "no resource type"
            raise invalid_argument(f"global config {cfg.identity} cannot be set on a {resource_type}; "
                                   f"it can be set on {allowed}", "resourceUuid")
        typed = cfg.parse(value)
        async with self._lock(resource_uuid, category, name):
            return await self._update_resource(category, name, resource_uuid, resource_type, typed)

    async def _update_resource(self, category: str, name: str, resource_uuid: str, resource_type: str,
                               typed: Any) -> Any:
        old = self._overrides.get((resource_uuid, category, name))

        def write() -> None:
            upsert(ResourceConfigVO, [ResourceConfigVO.resource_uuid, ResourceConfigVO.category, ResourceConfigVO.name],
                   resource_uuid=resource_uuid, resource_type=resource_type, category=category,
                   name=name, value=GlobalConfig.to_text(typed), updated_at=utcnow()).execute()

        self._writes += 1
        try:
            await self.db.atomic(write)
            self._overrides[(resource_uuid, category, name)] = typed
        finally:
            self._writes += 1
        await self.hooks.global_config_changed(category, name, old, typed, resource_uuid)
        return typed

    async def delete_resource(self, category: str, name: str, resource_uuid: str) -> None:
        self.config(category, name)
        async with self._lock(resource_uuid, category, name):
            await self._delete_resource(category, name, resource_uuid)

    async def _delete_resource(self, category: str, name: str, resource_uuid: str) -> None:
        old = self._overrides.get((resource_uuid, category, name))

        def write() -> None:
            ResourceConfigVO.delete().where((ResourceConfigVO.resource_uuid == resource_uuid)
                                            & (ResourceConfigVO.category == category)
                                            & (ResourceConfigVO.name == name)).execute()

        self._writes += 1
        try:
            await self.db.atomic(write)
            self._overrides.pop((resource_uuid, category, name), None)
        finally:
            self._writes += 1
        if old is not None:
            await self.hooks.global_config_changed(category, name, old, None, resource_uuid)

    def forget_resource_sync(self, resource_uuid: str) -> None:
        """Drop every override of a deleted resource (database thread)."""
        ResourceConfigVO.delete().where(ResourceConfigVO.resource_uuid == resource_uuid).execute()
        for key in [k for k in self._overrides if k[0] == resource_uuid]:
            del self._overrides[key]
        self._writes += 2  # a refresh reading before this delete must not put the overrides back

    async def refresh(self) -> int:
        """Re-read every value from the database and apply what another node changed, calling
        ``zstack_global_config_changed`` for each change (the cluster layer calls this at every
        heartbeat and when a peer says it changed something). Returns how many changed; 0 when
        a local change overlapped the read (the next refresh sees it settled)."""

        def read() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str, str]]]:
            return ([(r.category, r.name, r.value) for r in
                     GlobalConfigVO.select(GlobalConfigVO.category, GlobalConfigVO.name, GlobalConfigVO.value)],
                    [(r.resource_uuid, r.category, r.name, r.value) for r in
                     ResourceConfigVO.select(ResourceConfigVO.resource_uuid, ResourceConfigVO.category,
                                             ResourceConfigVO.name, ResourceConfigVO.value)])

        writes = self._writes
        if writes % 2:
            return 0
        stored, stored_overrides = await self.db.run(read)
        if self._writes != writes:
            return 0
        changes: list[tuple[str, str, Any, Any, str | None]] = []
        for category, name, text in stored:
            cfg = self.declared.get((category, name))
            if cfg is None:
                continue
            try:
                new = cfg.parse(text)
            except ZStackError:
                continue  # a value this node's validators refuse: keep the one it has
            old = self._values.get((category, name))
            if new != old:
                self._values[(category, name)] = new
                changes.append((category, name, old, new, None))
        present = set()
        for resource_uuid, category, name, text in stored_overrides:
            key = (resource_uuid, category, name)
            present.add(key)
            cfg = self.declared.get((category, name))
            if cfg is None:
                continue
            try:
                new = cfg.parse(text)
            except ZStackError:
                continue
            old = self._overrides.get(key)
            if new != old:
                self._overrides[key] = new
                changes.append((category, name, old, new, resource_uuid))
        for key in [k for k in self._overrides if k not in present]:
            changes.append((key[1], key[2], self._overrides.pop(key), None, key[0]))
        for change in changes:
            await self.hooks.global_config_changed(*change)
        return len(changes)

    def reload_value(self, category: str, name: str, text: str, resource_uuid: str | None = None) -> None:
        """Apply a change another node made (the cluster layer calls this)."""
        cfg = self.config(category, name)
        if resource_uuid is None:
            self._values[(category, name)] = cfg.parse(text)
        elif text == "":
            self._overrides.pop((resource_uuid, category, name), None)
        else:
            self._overrides[(resource_uuid, category, name)] = cfg.parse(text)
