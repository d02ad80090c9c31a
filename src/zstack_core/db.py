"""The database: peewee models of every plugin, their migrations, and I/O off the event loop.

One database per cluster of nodes: an SQLite file under the data directory by default (WAL mode,
one process), PostgreSQL or MySQL/MariaDB by URL when several nodes share it
(``database.url``: ``postgresql://user:pw@host/db``, ``mysql://user:pw@host/db`` with PyMySQL). Plugins contribute
models and numbered migrations through ``zstack_models``; at start-up each plugin's schema is
created or upgraded and its version recorded in ``schema_version``. A database written by a newer
version of a plugin stops start-up instead of being damaged. Each plugin's upgrade runs in one
transaction: on PostgreSQL and SQLite a failed migration leaves nothing behind; MySQL/MariaDB
commit DDL statements at once, so there only the recorded version is kept.

Every query runs in :class:`Database`'s worker threads (``await db.run(fn)``), never on the event
loop thread. SQLite gets a single worker, so writers never contend for its one lock; servers get
a small pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import unquote, urlsplit

import attrs
import peewee

from .errors import ErrorCode, SysErrors, ZStackError

if TYPE_CHECKING:
    # Imported where used: a node on SQLite that needs no migration uses neither (start-up).
    from playhouse.migrate import SchemaMigrator

__all__ = [
    "Database",
    "Migration",
    "ModelRegistration",
    "ResourceModel",
    "SchemaError",
    "database_proxy",
    "is_conflict",
    "new_uuid",
    "upsert",
    "utcnow",
]

log = logging.getLogger("zstack.db")
T = TypeVar("T")

database_proxy = peewee.DatabaseProxy()
"""Every model's ``Meta.database``; bound to the node's database when it starts."""


CONFLICT_RETRIES = 5
"""How many times :meth:`Database.atomic` runs a transaction again after the server aborted it
as a deadlock victim or a serialization failure, before the error reaches the caller."""

_CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
_CONFLICT_MYSQL_ERRORS = frozenset({1213})  # ER_LOCK_DEADLOCK ("try restarting transaction")


def is_conflict(exc: BaseException) -> bool:
    """The server aborted the transaction because it conflicted with another one and says to
    run it again: MySQL/MariaDB's deadlock (1213), PostgreSQL's deadlock (40P01) and
    serialization failure (40001). peewee wraps the driver's exception as its first argument.
    A lost connection, a lock timeout or a constraint is not a conflict."""
    if not isinstance(exc, peewee.OperationalError):
        return False
    for orig in (getattr(exc, "orig", None), *exc.args[:1], exc.__cause__, exc.__context__):
        if not isinstance(orig, Exception):
            continue
        code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
        if code in _CONFLICT_SQLSTATES:
            return True
        if code is None and type(orig).__name__ in ("DeadlockDetected", "SerializationFailure"):
            return True  # psycopg2's classes for those codes (pgcode is set only by the server)
        if type(orig).__module__.startswith("pymysql") and orig.args and orig.args[0] in _CONFLICT_MYSQL_ERRORS:
            return True
    return False


def new_uuid() -> str:
    """A resource UUID as ZStack writes them: 32 hex digits, no dashes."""
    return uuid.uuid4().hex


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def upsert(model: type[peewee.Model], conflict_target: Sequence[peewee.Field], **values: Any) -> peewee.Insert:
    """``INSERT`` of ``values``, or ``UPDATE`` of the row that clashes on ``conflict_target``.

    peewee's ``Model.replace`` is SQLite/MySQL-only (PostgreSQL refuses ``REPLACE``); this is the
    portable form: ``ON CONFLICT (...) DO UPDATE`` on SQLite and PostgreSQL, ``ON DUPLICATE KEY
    UPDATE`` on MySQL/MariaDB (which takes no conflict target).
    """
    keys = {f.name for f in conflict_target}
    preserve = [model._meta.fields[name] for name in values if name not in keys]
    query = model.insert(**values)
    if not preserve:
        return query.on_conflict_ignore()
    db = model._meta.database
    db = db.obj if isinstance(db, peewee.DatabaseProxy) else db
    if isinstance(db, peewee.MySQLDatabase):
        return query.on_conflict(preserve=preserve)
    return query.on_conflict(conflict_target=list(conflict_target), preserve=preserve)


class BaseModel(peewee.Model):
    INVENTORY: ClassVar[type[Any] | None] = None

    class Meta:
        database = database_proxy
        legacy_table_names = False

    def to_inventory(self) -> Any:
        """The row as its ``INVENTORY`` class (fields of the same name are copied)."""
        inv = type(self).INVENTORY
        if inv is None:
            raise TypeError(f"{type(self).__name__} has no INVENTORY class")
        data = self.__data__
        values = {a.name: data[a.name] for a in attrs.fields(inv) if a.name in data}
        return inv(**values)


class ResourceModel(BaseModel):
    """A resource row: UUID primary key and created/updated timestamps.

    ``INVENTORY`` is the attrs class APIs return for it and ``RESOURCE_TYPE`` its name in
    system tags, resource configs and queries (``VmInstance``). Convert with
    :meth:`to_inventory`; APIs never return rows.
    """

    RESOURCE_TYPE: ClassVar[str] = ""

    uuid = peewee.CharField(primary_key=True, max_length=32, default=new_uuid)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)

    def save(self, *args: Any, **kwargs: Any) -> int:
        self.updated_at = utcnow()
        return super().save(*args, **kwargs)

    def config_parents(self) -> list[str]:
        """UUIDs whose resource configs this resource inherits, nearest first (a host returns
        its cluster and zone)."""
        return []


class SchemaVersion(BaseModel):
    """The schema version of each plugin's models in this database."""

    plugin = peewee.CharField(primary_key=True, max_length=128)
    version = peewee.IntegerField()
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "schema_version"


@attrs.frozen(kw_only=True)
class Migration:
    """Upgrade a plugin's schema to ``version``. ``apply(migrator, db)`` gets a peewee
    :class:`~playhouse.migrate.SchemaMigrator` and runs inside a transaction where the database
    supports transactional DDL."""

    version: int
    apply: Callable[[SchemaMigrator, peewee.Database], None]
    description: str = ""


@attrs.frozen(kw_only=True)
class ModelRegistration:
    """A plugin's models and migrations, returned from ``zstack_models``.

    ``name`` identifies the schema (usually the plugin name). On a new database the models are
    created as they are now and the schema is recorded at ``version``; on an older one the
    migrations above its recorded version run in order. ``version`` is 1 plus the migrations.
    """

    name: str
    models: Sequence[type[BaseModel]]
    migrations: Sequence[Migration] = ()

    def __attrs_post_init__(self) -> None:
        # A plugin bug caught when it registers, not half-way through someone's upgrade.
        versions = sorted(m.version for m in self.migrations)
        if versions and versions[0] < 2:
            raise ValueError(f"schema {self.name!r}: migrations are numbered from 2 (version 1 is the schema "
                             f"as first released), got {versions}")
        twice = sorted({v for v in versions if versions.count(v) > 1})
        if twice:
            raise ValueError(f"schema {self.name!r}: more than one migration to version {twice[0]}")

    @property
    def version(self) -> int:
        return max([1, *(m.version for m in self.migrations)])


class SchemaError(Exception):
    """The database's schema cannot be used by this node (written by a newer version, or a
    migration failed)."""


class Database:
    """The node's database connection and the threads it is used from."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.db: peewee.Database = peewee.SqliteDatabase(
                _sqlite_path(url),
                pragmas={"journal_mode": "wal", "synchronous": "normal", "foreign_keys": 1, "busy_timeout": 10000},
                check_same_thread=False,
            )
        else:
            from playhouse import db_url

            scheme = urlsplit(url).scheme
            if scheme not in db_url.schemes:
                raise ValueError(f"database.url has an unsupported scheme {scheme!r}: use sqlite:///PATH, "
                                 "postgresql://USER:PASSWORD@HOST:PORT/DATABASE or "
                                 "mysql://USER:PASSWORD@HOST:PORT/DATABASE")
            self.db = db_url.connect(url, **_server_options(url))
        workers = 1 if self.is_sqlite else 8
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zstack-db")
        self._local = threading.local()  # per worker: the generation its connection was opened in
        self._generation = 0
        self.conflicts_retried = 0
        """Transactions run again after a conflict (see :meth:`atomic`), since start-up."""

    # -- running work off the loop ------------------------------------------------------------

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the calling thread (only from a database worker thread or a script)."""
        return fn(*args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a database thread and return its result.

        Database errors become ``SYS.1006`` (or ``SYS.1015`` for a unique-key clash) with the
        driver's message, so callers see an ErrorCode, never a driver exception.
        """
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._call, fn, args)
        except peewee.IntegrityError as exc:
            raise SysErrors.exc("1015", f"database constraint: {exc}") from exc
        except peewee.DataError as exc:  # a value the column cannot hold (too long, out of range)
            raise SysErrors.exc("1007", f"the database refused a value: {exc}".strip()) from exc
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            raise SysErrors.exc("1006", f"database unavailable: {exc}".strip()) from exc

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        # peewee keeps a connection the server dropped (restart, failover, idle timeout) and
        # fails on it forever. A failure outside a transaction therefore drops this thread's
        # connection and bumps the generation, so every worker reconnects before its next call:
        # one call fails with SYS.1006, the next ones work again.
        if not self.is_sqlite and getattr(self._local, "generation", self._generation) != self._generation:
            self._drop_connection()
        if self.db.is_closed():
            self.db.connect(reuse_if_open=True)
            self._local.generation = self._generation
        try:
            return fn(*args)
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            if not self.is_sqlite and not self.db.in_transaction() and not is_conflict(exc):
                self._generation += 1
                self._drop_connection()
            raise

    def _drop_connection(self) -> None:
        try:
            self.db.close()
        except Exception:  # the connection is already unusable; forget it all the same
            self.db._state.reset()

    async def atomic(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in one transaction in a database thread.

        A transaction the server aborts as a deadlock victim or a serialization failure
        (:func:`is_conflict`) runs again, up to :data:`CONFLICT_RETRIES` times after short
        random pauses, as ZStack's ``@DeadlockAutoRestart`` does: the server rolled all of it
        back, so ``fn`` must only write through the database (or be safe to repeat)."""

        def tx() -> T:
            if self.db.in_transaction():  # nested: the outer transaction is the one to run again
                with self.db.atomic():
                    return fn(*args)
            for attempt in range(CONFLICT_RETRIES + 1):
                try:
                    with self.db.atomic():
                        return fn(*args)
                except peewee.OperationalError as exc:
                    if attempt == CONFLICT_RETRIES or not is_conflict(exc):
                        raise
                    self.conflicts_retried += 1
                    log.debug("transaction %s conflicted with another (%s); running it again",
                              getattr(fn, "__qualname__", fn), exc)
                    time.sleep(random.uniform(0.001, 0.01) * (2 ** attempt))
            raise AssertionError("unreachable")

        return await self.run(tx)

    # -- schema -------------------------------------------------------------------------------

    def migrate(self, registrations: Iterable[ModelRegistration]) -> dict[str, tuple[int, int]]:
        """Create or upgrade every registration's schema (runs in a database thread).

        Returns ``{name: (version before, version after)}``; 0 means the schema was new.
        """
        database_proxy.initialize(self.db)
        done: dict[str, tuple[int, int]] = {}
        existing: set[str] | None = None
        with self.db.connection_context() if self.db.is_closed() else _nullcontext(), self._schema_lock():
            self.db.create_tables([SchemaVersion], safe=True)
            for reg in registrations:
                row = SchemaVersion.get_or_none(SchemaVersion.plugin == reg.name)
                current = row.version if row else 0
                target = reg.version
                if current > target:
                    raise SchemaError(
                        f"the database schema of {reg.name!r} is at version {current}, newer than this "
                        f"node's {target}: upgrade the {reg.name} plugin before starting this node")
                if current == target:
                    # A model added without a migration gets its table. The tables already there
                    # are not asked for again: one query for the list instead of a CREATE ... IF
                    # NOT EXISTS per table and index, most of a warm start's time in here.
                    if existing is None:
                        existing = set(self.db.get_tables())
                    missing = [m for m in reg.models if m._meta.table_name not in existing]
                    if missing:
                        self.db.create_tables(missing, safe=True)
                    done[reg.name] = (current, current)
                    continue
                step = "creating the tables" if current == 0 else "creating new tables"
                try:
                    with self.db.atomic():
                        if current > 0:
                            from playhouse.migrate import SchemaMigrator

                            migrator = SchemaMigrator.from_database(self.db)
                            for m in sorted(reg.migrations, key=lambda m: m.version):
                                if current < m.version <= target:
                                    step = f"migration {m.version}" + (f" ({m.description})" if m.description else "")
                                    log.info("migrating %s: %s", reg.name, step)
                                    m.apply(migrator, self.db)
                            step = "creating new tables"
                        self.db.create_tables(list(reg.models), safe=True)
                        upsert(SchemaVersion, [SchemaVersion.plugin], plugin=reg.name, version=target,
                               updated_at=utcnow()).execute()
                except SchemaError:
                    raise
                except Exception as exc:
                    # Where DDL is transactional (PostgreSQL, SQLite) nothing of the upgrade is
                    # left; the schema stays at ``current``.
                    note = ""
                    if isinstance(self.db, peewee.MySQLDatabase):
                        note = (" (MySQL/MariaDB cannot roll back DDL: what the migration changed before it "
                                "failed is still there; repair it by hand before starting again)")
                    raise SchemaError(f"upgrading the schema of {reg.name!r} from version {current} to {target} "
                                      f"failed at {step}: {type(exc).__name__}: {exc}; the schema stays at "
                                      f"version {current}{note}") from exc
                done[reg.name] = (current, target)
        return done

    @contextlib.contextmanager
    def _schema_lock(self) -> Iterator[None]:
        """Hold the cluster-wide schema lock: nodes that start together against one server
        database upgrade it one after the other (the others then find it done) instead of
        racing to create the same tables. SQLite serves one process and needs none."""
        if isinstance(self.db, peewee.PostgresqlDatabase):
            self.db.execute_sql("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK_ID,))
            try:
                yield
            finally:
                self.db.execute_sql("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK_ID,))
        elif isinstance(self.db, peewee.MySQLDatabase):
            got = self.db.execute_sql("SELECT GET_LOCK(%s, %s)", ("zstack_schema", 600)).fetchone()[0]
            if got != 1:
                raise SchemaError("another node held the schema lock for 10 minutes; is one stuck upgrading?")
            try:
                yield
            finally:
                self.db.execute_sql("SELECT RELEASE_LOCK(%s)", ("zstack_schema",))
        else:
            yield

    def schema_versions(self) -> dict[str, int]:
        return {r.plugin: r.version for r in SchemaVersion.select()}

    def close(self) -> None:
        def close_conn() -> None:
            if not self.db.is_closed():
                self.db.close()

        try:
            self._executor.submit(close_conn).result(10)
        finally:
            self._executor.shutdown(wait=True)


_SCHEMA_LOCK_ID = 0x7A5C_4D0B_5C4E_3A01
"""The PostgreSQL advisory lock key of schema upgrades (any constant no one else uses)."""


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _server_options(url: str) -> dict[str, Any]:
    """``db_url.connect`` options for a server URL.

    User and password are percent-decoded, as in any URL (a password may contain ``@``).
    MySQL/MariaDB: ``DATETIME(6)`` keeps microseconds (plain ``DATETIME`` drops them, so times
    would not round-trip), ``LONGTEXT`` lifts ``TEXT``'s 64 KiB limit (job results, config
    values), and the password goes to PyMySQL as ``password`` (peewee passes the deprecated
    ``passwd``, a DeprecationWarning on every connection).
    """
    options: dict[str, Any] = {"unquote_user": True, "unquote_password": True}
    parsed = urlsplit(url)
    if parsed.scheme.split("+", 1)[0] == "mysql":
        options["field_types"] = {"DATETIME": "DATETIME(6)", "TEXT": "LONGTEXT"}
        if parsed.password is not None:
            options["password"] = unquote(parsed.password)
    return options


def _sqlite_path(url: str) -> str:
    # sqlite:///relative.db, sqlite:////abs/path.db, sqlite:///:memory:
    rest = url.split("://", 1)[1]
    if rest.startswith("/"):
        rest = rest[1:]
    return rest or ":memory:"


def default_url(data_dir: Path) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(data_dir / 'zstack.db').resolve()}"


def db_error(exc: BaseException) -> ErrorCode:
    if isinstance(exc, ZStackError):
        return exc.error
    return SysErrors.error("1006", f"database: {type(exc).__name__}: {exc}")
