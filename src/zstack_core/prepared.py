"""Hot statements compiled once.

peewee composes every statement's SQL text from its expression tree on each call. In the scale
benchmark (BENCHMARKS.md) that composing, not running the SQL, was most of the database thread's
time (79% of its samples, SQLite itself 3%). The few statements a service runs for every VM
create are therefore compiled once per kind of database and then executed with fresh
parameters; everything else stays ordinary peewee.

    _used = Prepared(lambda p: UsedIpVO.select(UsedIpVO.ip_int)
                     .where(UsedIpVO.l3_network_uuid == p.l3, UsedIpVO.ip_int >= p.start_int))
    rows = _used.run(l3=l3_uuid, start_int=0).fetchall()

``p.<name>`` stands wherever a parameter goes (``p.<name>_int`` for an integer column: peewee
converts values through the column's type, so the marker must survive that). A constant
written into the query instead of a marker is refused when the statement is first compiled,
since every call would then get that constant.

Run these in the database thread (``node.db.run``), as any peewee call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import peewee

from .db import database_proxy

__all__ = ["ClashInsert", "InsertRow", "Markers", "Prepared", "current_database"]


def current_database() -> peewee.Database:
    """The database the models are bound to now (behind the process-wide proxy)."""
    db = database_proxy.obj if isinstance(database_proxy, peewee.DatabaseProxy) else database_proxy
    if db is None:
        raise RuntimeError("the database is not open")
    return db  # type: ignore[no-any-return]


class Markers:
    """``markers.uuid`` -> a value no real parameter has; :meth:`name_of` maps it back."""

    def __init__(self) -> None:
        self._names: dict[Any, str] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy/pickle probes are not parameters
            raise AttributeError(name)
        value: Any = -(7_000_000_000 + len(self._names)) if name.endswith("_int") else f"\x00marker:{name}"
        self._names[value] = name
        return value

    def name_of(self, value: Any) -> str:
        try:
            return self._names[value]
        except (KeyError, TypeError):
            raise AssertionError(f"a constant {value!r} in a prepared statement; pass it as a parameter") from None


class Prepared:
    """A statement compiled by peewee once per kind of database, then executed with fresh
    parameters. ``build(p)`` returns the peewee query with ``p.<name>`` wherever a parameter
    goes; :meth:`run` executes it and returns the cursor; :meth:`rows` runs a ``SELECT`` of whole
    rows of ``model`` and returns model instances (with peewee's conversion of column values, as
    a normal select gives)."""

    def __init__(self, build: Callable[[Markers], peewee.Query]) -> None:
        self._build = build
        self._compiled: dict[type[Any], tuple[str, list[str]]] = {}
        self._lock = threading.Lock()

    def _sql(self, db: peewee.Database, params: dict[str, Any]) -> tuple[str, list[Any]]:
        compiled = self._compiled.get(type(db))
        if compiled is None:
            with self._lock:
                markers = Markers()
                sql, values = self._build(markers).sql()
                compiled = self._compiled[type(db)] = (sql, [markers.name_of(v) for v in values])
        sql, names = compiled
        return sql, [params[n] for n in names]

    def run(self, **params: Any) -> Any:
        db = current_database()
        sql, values = self._sql(db, params)
        return db.execute_sql(sql, values)

    def rows(self, model: type[peewee.Model], **params: Any) -> list[Any]:
        sql, values = self._sql(current_database(), params)
        return list(model.raw(sql, *values))


class InsertRow:
    """A prepared ``INSERT`` of every column of ``model``: ``run(row)`` writes an unsaved model
    instance (``Model(**values)``, whose defaults are already filled in) as ``row.save()``
    would, without composing the statement again."""

    def __init__(self, model: type[peewee.Model]) -> None:
        fields = list(model._meta.sorted_fields)
        if any(isinstance(f, peewee.BooleanField) for f in fields):
            raise TypeError(f"{model.__name__}: boolean columns cannot be prepared here")  # no marker survives bool()
        self._keys = [(f.name, f.name + "_int" if isinstance(f, peewee.IntegerField) else f.name) for f in fields]
        self._prepared = Prepared(lambda p: model.insert({f: getattr(p, key) for f, (_, key) in zip(fields, self._keys)}))

    def run(self, row: peewee.Model) -> None:
        data = row.__data__
        self._prepared.run(**{key: data.get(name) for name, key in self._keys})


class ClashInsert:
    """A prepared ``INSERT`` whose clash on a unique key is an answer, not an error: ``run``
    returns False when the row's key is taken (another allocator got there first).

    On SQLite and PostgreSQL the statement itself ignores the clash (``INSERT OR IGNORE`` /
    ``ON CONFLICT DO NOTHING``, which leave foreign-key errors raising), so no savepoint is
    needed around it; elsewhere (MySQL's ``INSERT IGNORE`` would swallow any error) a savepoint
    undoes the failed insert."""

    def __init__(self, build: Callable[[Markers], peewee.Insert]) -> None:
        self._ignoring = Prepared(lambda p: build(p).on_conflict_ignore())
        self._plain = Prepared(build)

    def run(self, **params: Any) -> bool:
        db = current_database()
        if isinstance(db, (peewee.SqliteDatabase, peewee.PostgresqlDatabase)):
            return bool(self._ignoring.run(**params).rowcount)
        try:
            with db.atomic():
                self._plain.run(**params)
        except peewee.IntegrityError:
            return False
        return True
