"""Hot statements compiled once.

Building SQL text, not running it, was most of the database thread's time in the scale
benchmark (peewee composes every statement from its expression tree on each call). The
statements this service runs for every VM create are compiled once per kind of database and
then executed with fresh parameters; everything else stays ordinary peewee. (The network
service has the same helper: services share no code but the kernel's.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import peewee

from zstack_core.db import database_proxy

__all__ = ["InsertRow", "Markers", "Prepared"]


def _database() -> peewee.Database:
    db = database_proxy.obj if isinstance(database_proxy, peewee.DatabaseProxy) else database_proxy
    assert db is not None, "the database is not open"
    return db  # type: ignore[no-any-return]


class Prepared:
    """A statement compiled by peewee once per kind of database, then executed with fresh
    parameters. ``build(p)`` returns the peewee query with ``p.<name>`` wherever a parameter
    goes (``p.<name>_int`` for an integer column); :meth:`run` executes it (a cursor),
    :meth:`rows` runs a ``SELECT`` of whole rows of ``model`` and returns model instances
    (with peewee's conversion of column values, as a normal select gives)."""

    def __init__(self, build: Callable[[Markers], peewee.Query]) -> None:
        self._build = build
        self._compiled: dict[type[Any], tuple[str, list[str]]] = {}
        self._lock = threading.Lock()

    def _sql(self, params: dict[str, Any]) -> tuple[str, list[Any]]:
        db = _database()
        compiled = self._compiled.get(type(db))
        if compiled is None:
            with self._lock:
                markers = Markers()
                sql, values = self._build(markers).sql()
                compiled = self._compiled[type(db)] = (sql, [markers.name_of(v) for v in values])
        sql, names = compiled
        return sql, [params[n] for n in names]

    def run(self, **params: Any) -> Any:
        sql, values = self._sql(params)
        return _database().execute_sql(sql, values)

    def rows(self, model: type[peewee.Model], **params: Any) -> list[Any]:
        sql, values = self._sql(params)
        return list(model.raw(sql, *values))


class Markers:
    """``markers.uuid`` -> a value no real parameter has; ``name_of`` maps it back."""

    def __init__(self) -> None:
        self._names: dict[Any, str] = {}

    def __getattr__(self, name: str) -> Any:
        # Integers for integer columns (peewee converts values through the column's type).
        value: Any = -(7_000_000_000 + len(self._names)) if name.endswith("_int") else f"\x00marker:{name}"
        self._names[value] = name
        return value

    def name_of(self, value: Any) -> str:
        try:
            return self._names[value]
        except (KeyError, TypeError):
            raise AssertionError(f"a constant {value!r} in a prepared statement; pass it as a parameter") from None


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
