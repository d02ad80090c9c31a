"""Hot statements compiled once.

Building SQL text, not running it, was most of the database thread's time in the scale
benchmark (peewee composes every statement from its expression tree on each call: 79% of the
thread's samples, SQLite itself 3%). The handful of statements the network service runs for
every VM create are compiled once per kind of database and then executed with fresh
parameters; everything else stays ordinary peewee.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import peewee

from .models import real_database

__all__ = ["ClashInsert", "Markers", "Prepared"]


class Prepared:
    """A hot statement compiled by peewee once per kind of database, then executed with fresh
    parameters (``database.execute_sql``): building the SQL text was most of the database
    thread's time in the scale benchmark, running it a few per cent.

    ``build(p)`` returns the peewee query with ``p.<name>`` wherever a parameter goes (a
    marker the compiled parameters are matched against); ``run(name=value, ...)`` executes it.
    """

    def __init__(self, build: Callable[[Markers], peewee.Query]) -> None:
        self._build = build
        self._compiled: dict[type[Any], tuple[str, list[str]]] = {}
        self._lock = threading.Lock()

    def run(self, **params: Any) -> Any:
        db = real_database()
        compiled = self._compiled.get(type(db))
        if compiled is None:
            with self._lock:
                markers = Markers()
                sql, values = self._build(markers).sql()
                names = [markers.name_of(v) for v in values]
                compiled = self._compiled[type(db)] = (sql, names)
        sql, names = compiled
        return db.execute_sql(sql, [params[n] for n in names])


class Markers:
    """``markers.l3`` -> a value no real parameter has; ``name_of`` maps it back."""

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
        db = real_database()
        if isinstance(db, (peewee.SqliteDatabase, peewee.PostgresqlDatabase)):
            return bool(self._ignoring.run(**params).rowcount)
        try:
            with db.atomic():
                self._plain.run(**params)
        except peewee.IntegrityError:
            return False
        return True
