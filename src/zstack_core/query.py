"""One generic query over every inventory (ZStack's ``APIQuery*Msg``).

A plugin registers a :class:`QueryableResource` (its model and inventory); the node then serves
``Query<Resource>`` for it with conditions ``=, !=, >, >=, <, <=, in, not in, like, not like,
is null, is not null``, sort, limit, offset and count, plus ``__systemTag__`` to select by tag.
Field names are the inventory's, camelCase on the wire; an unknown one is refused with the list
of valid ones.

The same answers on every backend:

- SQL NULL: only ``is null`` selects a row whose field is NULL; ``!=``, ``not in`` and
  ``not like`` do not (as in SQL and in ZStack's JPQL queries).
- ``like``: text fields only; ``%`` and ``_`` are the wildcards, ``\\`` escapes them (``50\\%``),
  and ASCII case is ignored.
- Sorting: NULL before every value (first ascending, last descending), ties by primary key;
  text in the database's collation (code points on SQLite).
- Datetimes are naive UTC; an aware value in a condition is converted to UTC.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import peewee

from .errors import SysErrors, invalid_argument
from .messages import APIMessage, APIReply
from .serialize import camel

if TYPE_CHECKING:
    from .db import Database, ResourceModel

__all__ = ["APIQueryMessage", "APIQueryReply", "QueryCondition", "QueryEngine", "QueryableResource"]

OPS = ("=", "!=", ">", ">=", "<", "<=", "in", "not in", "like", "not like", "is null", "is not null")
# ZStack's spellings, accepted too.
_ALIASES = {"?=": "in", "!?=": "not in", "~=": "like", "!~=": "not like"}
SYSTEM_TAG = "__systemTag__"


@attrs.define(kw_only=True)
class QueryCondition:
    """``name op value``; ``value`` is a list (or comma-separated text) for ``in``/``not in``
    and absent for ``is null``/``is not null``."""

    name: str
    op: str = "="
    value: Any = None


@attrs.define(kw_only=True)
class APIQueryMessage(APIMessage):
    """Base of every ``Query<Resource>`` API."""

    RESOURCE = ""

    conditions: list[QueryCondition] = attrs.field(factory=list)
    limit: int | None = 1000
    start: int = 0
    sort_by: str | None = None
    sort_direction: str = "asc"
    count: bool = False
    """Return only the number of matches."""
    reply_with_count: bool = False
    """Return the number of matches beside the page of inventories."""


@attrs.define(kw_only=True)
class APIQueryReply(APIReply):
    inventories: list[Any] = attrs.field(factory=list)
    total: int | None = None


@attrs.frozen(kw_only=True)
class QueryableResource:
    """A resource users can query, returned from ``zstack_queryable_resources``.

    ``to_inventories`` turns a page of rows into inventories (runs in a database thread; use it
    to load nested lists such as a VM's NICs in one query); by default each row's
    ``to_inventory()`` is used.
    """

    name: str
    model: type[ResourceModel]
    inventory: type[Any]
    to_inventories: Callable[[list[Any]], list[Any]] | None = None

    def message_class(self) -> type[APIQueryMessage]:
        return _query_message_class(self.name)


@functools.cache
def _query_message_class(name: str) -> type[APIQueryMessage]:
    """``APIQuery<name>Msg``, made once per name: building an attrs class costs about a
    millisecond, and :meth:`QueryEngine.find` needs the class on every call (the scale
    benchmark found a third of the event loop's time going there)."""
    cls = type(f"APIQuery{name}Msg", (APIQueryMessage,),
               {"API_NAME": f"Query{name}", "RESOURCE": name, "__module__": __name__,
                "__doc__": f"Query {name} inventories."})
    return attrs.define(kw_only=True)(cls)


def _like_pattern(pattern: str, where: str) -> str:
    """``pattern`` if it is a valid LIKE pattern: ``\\`` escapes the next character (``\\%``
    is a literal percent sign), so it cannot end the pattern."""
    escaped = False
    for c in pattern:
        escaped = not escaped and c == "\\"
    if escaped:
        raise invalid_argument("a like pattern cannot end with the escape character '\\' "
                               "(write '\\\\' for a backslash)", where)
    return pattern


def _kind(field: peewee.Field) -> str:
    """``integer``, ``boolean``, ``datetime``...: a field's type in words, for error messages."""
    name = type(field).__name__.removesuffix("Field").lower()
    return {"char": "text", "auto": "integer", "biginteger": "integer", "bigauto": "integer"}.get(name, name)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class QueryEngine:
    """Turns query messages into peewee queries and runs them in a database thread."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.resources: dict[str, QueryableResource] = {}
        self.scopes: list[Callable[[APIQueryMessage, QueryableResource, Any], Any]] = []
        """Filters applied to every query (the identity layer limits accounts to their own)."""

    def register(self, resource: QueryableResource) -> None:
        if resource.name in self.resources:
            raise ValueError(f"queryable resource {resource.name!r} is registered twice")
        self.resources[resource.name] = resource

    def fields(self, resource: QueryableResource) -> dict[str, peewee.Field]:
        """Wire name -> model field, for every inventory field stored in the model."""
        model_fields = resource.model._meta.fields
        names = {a.name for a in attrs.fields(resource.inventory)} | {"uuid", "created_at", "updated_at"}
        return {camel(n): model_fields[n] for n in sorted(names) if n in model_fields}

    def _field(self, resource: QueryableResource, name: str, where: str) -> peewee.Field:
        fields = self.fields(resource)
        field = fields.get(name) or fields.get(camel(name)) or fields.get(camel(_snake(name)))
        if field is None:
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise invalid_argument(f"{resource.name} has no queryable field {name!r}{hint}; valid fields: "
                                   f"{', '.join(fields)}, {SYSTEM_TAG}", where)
        return field

    @staticmethod
    def _coerce(field: peewee.Field, value: Any, where: str) -> Any:
        """``value`` as the type of ``field``; ``SYS.1007`` naming the field when it is not one."""
        try:
            if isinstance(field, (peewee.IntegerField, peewee.BigIntegerField)):
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                number = int(value)
                if not -(2**63) <= number < 2**63:  # no column holds it; the driver would raise
                    raise ValueError
                return number
            if isinstance(field, peewee.FloatField):
                if isinstance(value, bool):
                    raise ValueError
                return float(value)
            if isinstance(field, peewee.BooleanField):
                if isinstance(value, bool):
                    return value
                if str(value).lower() in ("true", "false"):
                    return str(value).lower() == "true"
                raise ValueError
            if isinstance(field, peewee.DateTimeField):
                moment = value if isinstance(value, datetime.datetime) else datetime.datetime.fromisoformat(str(value))
                # Times are stored as naive UTC (db.utcnow); an aware value is compared as that.
                if moment.tzinfo is not None:
                    moment = moment.astimezone(datetime.timezone.utc).replace(tzinfo=None)
                return moment
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        except (TypeError, ValueError):
            raise invalid_argument(f"{value!r} is not a valid {_kind(field)} for {camel(field.name)}", where) from None

    def _expression(self, resource: QueryableResource, cond: QueryCondition, i: int) -> Any:
        where = f"$.conditions[{i}]"
        op = _ALIASES.get(cond.op.strip().lower(), cond.op.strip().lower())
        if op not in OPS:
            raise invalid_argument(f"unknown operator {cond.op!r}; valid: {', '.join(OPS)}", where + ".op")
        if cond.name == SYSTEM_TAG:
            return self._tag_expression(resource, op, cond.value, where)
        field = self._field(resource, cond.name, where + ".name")
        if op in ("is null", "is not null"):
            return field.is_null(op == "is null")
        if cond.value is None:
            raise invalid_argument(f"operator {op!r} needs a value", where + ".value")
        if op in ("in", "not in"):
            values = cond.value if isinstance(cond.value, list) else str(cond.value).split(",")
            values = [self._coerce(field, v, where + ".value") for v in values]
            return field.in_(values) if op == "in" else field.not_in(values)
        if op in ("like", "not like"):
            if not isinstance(field, (peewee.CharField, peewee.TextField)):
                raise invalid_argument(f"{op} applies to text fields only, not to {camel(field.name)} "
                                       f"({_kind(field)})", where + ".op")
            if not isinstance(cond.value, str):
                raise invalid_argument("like needs a text pattern ('%' matches anything)", where + ".value")
            expr = self._ilike(field, _like_pattern(cond.value, where + ".value"))
            return expr if op == "like" else ~expr
        value = self._coerce(field, cond.value, where + ".value")
        return {"=": field == value, "!=": field != value, ">": field > value, ">=": field >= value,
                "<": field < value, "<=": field <= value}[op]

    def _ilike(self, field: peewee.Field, pattern: str) -> Any:
        """Case-insensitive LIKE with ``\\`` as the escape character on every backend.

        peewee's ``**`` is ILIKE on PostgreSQL (backslash escapes by default) and LIKE on SQLite
        (ignores ASCII case, but has no escape character unless told: ``ESCAPE '\\'``); on
        MySQL/MariaDB it is a plain LIKE whose case rule is the column's collation, so both
        sides are lowered there.
        """
        if self.db is not None and isinstance(self.db.db, peewee.MySQLDatabase):
            return peewee.fn.LOWER(field) ** peewee.fn.LOWER(pattern)
        if self.db is not None and self.db.is_sqlite:
            return peewee.NodeList((field, peewee.SQL("LIKE"), pattern, peewee.SQL("ESCAPE '\\'")))
        return field ** pattern

    def _tag_expression(self, resource: QueryableResource, op: str, value: Any, where: str) -> Any:
        from .tags import SystemTagVO

        pk = resource.model._meta.primary_key
        sub = SystemTagVO.select(SystemTagVO.resource_uuid)
        if op in ("=", "!="):
            sub = sub.where(SystemTagVO.tag == str(value))
        elif op in ("like", "not like"):
            sub = sub.where(self._ilike(SystemTagVO.tag, _like_pattern(str(value), where + ".value")))
        elif op in ("in", "not in"):
            values = value if isinstance(value, list) else str(value).split(",")
            sub = sub.where(SystemTagVO.tag.in_([str(v) for v in values]))
        else:
            raise invalid_argument(f"{SYSTEM_TAG} supports =, !=, in, not in, like, not like", where + ".op")
        return pk.not_in(sub) if op in ("!=", "not in", "not like") else pk.in_(sub)

    def build(self, resource: QueryableResource, msg: APIQueryMessage) -> tuple[Any, Any]:
        """The (filtered query, page query) for ``msg``; raises ``SYS.1007`` on bad input."""
        model = resource.model
        query = model.select()
        for i, cond in enumerate(msg.conditions):
            query = query.where(self._expression(resource, cond, i))
        for scope in self.scopes:
            query = scope(msg, resource, query)
        if msg.limit is not None and msg.limit < 0:
            raise invalid_argument("limit cannot be negative", "$.limit")
        if msg.start < 0:
            raise invalid_argument("start cannot be negative", "$.start")
        page = query
        if msg.sort_by:
            field = self._field(resource, msg.sort_by, "$.sortBy")
            direction = msg.sort_direction.lower()
            if direction not in ("asc", "desc"):
                raise invalid_argument("sortDirection must be asc or desc", "$.sortDirection")
            # NULL sorts before every value on every backend (PostgreSQL would put it last).
            order = field.desc(nulls="last") if direction == "desc" else field.asc(nulls="first")
            page = page.order_by(order, model._meta.primary_key)
        else:
            page = page.order_by(model._meta.primary_key)
        if msg.limit is not None:
            page = page.limit(msg.limit)
        if msg.start:
            page = page.offset(msg.start)
        return query, page

    def _execute(self, resource: QueryableResource, msg: APIQueryMessage) -> APIQueryReply:
        query, page = self.build(resource, msg)
        if msg.count:
            return APIQueryReply(inventories=[], total=query.count())
        rows = list(page)
        if resource.to_inventories is not None:
            inventories = resource.to_inventories(rows)
        else:
            inventories = [row.to_inventory() for row in rows]
        total = query.count() if msg.reply_with_count else None
        return APIQueryReply(inventories=inventories, total=total)

    async def query(self, msg: APIQueryMessage) -> APIQueryReply:
        resource = self.resources.get(type(msg).RESOURCE)
        if resource is None:
            raise SysErrors.exc("1008", f"{type(msg).RESOURCE!r} is not queryable")
        # Validate on the loop so bad input costs no database round trip.
        self.build(resource, msg)
        return await self.db.run(self._execute, resource, msg)

    async def find(self, resource_name: str, conditions: Sequence[QueryCondition | tuple[str, str, Any]] = (),
                   **kwargs: Any) -> list[Any]:
        """Inventories of ``resource_name`` matching ``conditions`` (for services and tests)."""
        resource = self.resources.get(resource_name)
        if resource is None:
            raise SysErrors.exc("1008", f"{resource_name!r} is not queryable")
        conds = [c if isinstance(c, QueryCondition) else QueryCondition(name=c[0], op=c[1], value=c[2]) for c in conditions]
        msg = resource.message_class()(conditions=conds, **kwargs)
        return (await self.query(msg)).inventories
