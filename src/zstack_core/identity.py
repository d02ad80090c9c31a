"""Accounts, sessions and who may touch what (ZStack's identity module).

* An **admin** account (``SystemAdmin``, UUID :data:`~zstack_core.ownership.ADMIN_ACCOUNT_UUID`) is
  created the first time a node opens a database. Its password comes from
  ``ZSTACK_ADMIN_PASSWORD``, else ``[identity] admin_password`` in ``zstack.toml``, else it is
  generated and printed once, on standard error, at that first start.
* ``LogInByAccount`` answers a **session** that expires after the global config
  ``identity/session.timeout`` seconds; every other API called with a session acts as its account.
  Passwords are stored as scrypt hashes with a random salt and compared in constant time.
* **Who needs a session.** The HTTP layer marks every message it builds with
  :data:`REQUIRE_SESSION`; such a message without a valid session is refused with ``SYS.1013``.
  A program that embeds the node and calls ``node.api_call`` without a session is trusted and acts
  as admin, as before identity existed.
* **Ownership.** Resources belong to the account that created them (services call
  :func:`~zstack_core.ownership.own_sync`). A ``Normal`` account sees only its own (and what was
  shared with it) in every query, and may act only on its own: the resource acted on (the fields
  ``uuid`` and ``resource_uuid``, and the resources named in the path of a ``POST``/``PUT``/
  ``DELETE`` route, as REST reads ``PUT /v1/images/{imageUuid}/actions``) must be the caller's;
  other ``*_uuid`` / ``*_uuids`` fields name resources it uses (an image, a network) and may also
  be shared with it (``ShareResource``). A refusal is ``SYS.1012`` (HTTP 403), as ZStack answers: resource UUIDs are
  random, so saying that one exists tells nothing a caller could guess. APIs registered with
  ``ApiRegistration(admin_only=True)`` are refused to ``Normal`` accounts outright.
  A field that holds a UUID but names no resource opts out with ``metadata={"resource": False}``.
* **Session cache.** Every API call over HTTP presents its session; each node keeps the sessions
  it has checked in memory (their account, type and expiry) instead of reading the database on
  every request. Expiry is checked on every use. ``LogOut`` and ``DeleteAccount`` drop the
  sessions they end from this node's cache at once and publish :class:`SessionsEndedEvent`,
  which drops them on every other node of the cluster as soon as it arrives; should a peer miss
  that event (unreachable for a moment), it re-reads a cached session from the database at the
  latest ``identity.session_cache_ttl`` seconds (default 5) after it last did.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import peewee

from .api import ApiInterceptor, ApiRegistration
from .db import BaseModel, ModelRegistration, ResourceModel, new_uuid, utcnow
from .errors import ErrorCodeSpace, SysErrors, invalid_argument
from .globalconfig import GlobalConfig, Range
from .messages import APIEvent, APIMessage, APIReply, Event
from .ownership import ADMIN_ACCOUNT_UUID, AccountResourceRefVO, disown_sync, own_sync
from .properties import GlobalProperty
from .query import APIQueryMessage, QueryableResource
from .service import Service, handles

if TYPE_CHECKING:
    from .node import ManagementNode

__all__ = [
    "ACCOUNT_TYPES",
    "AccountInventory",
    "AccountVO",
    "IdentityErrors",
    "IdentityService",
    "OwnershipInterceptor",
    "REQUIRE_SESSION",
    "SessionInterceptor",
    "SessionInventory",
    "SessionVO",
    "SessionsEndedEvent",
    "SharedResourceVO",
    "hash_password",
    "verify_password",
]

log = logging.getLogger("zstack.identity")

REQUIRE_SESSION = "require_session"
"""Message header set by callers that must present a session (the HTTP layer sets it)."""

ACCOUNT_TYPES = ("SystemAdmin", "Normal")

IdentityErrors = ErrorCodeSpace(
    prefix="ID",
    codes={
        "1000": "wrong account name or password",
        "1001": "operation not allowed on this account",
        "1002": "account still owns resources",
    },
    http_status={"1000": 401, "1001": 409, "1002": 409},
)

# -- passwords --------------------------------------------------------------------------------

# scrypt at N=2**14, r=8 costs ~50 ms and 16 MiB per guess: slow for an attacker with the
# hashes, still quick enough for a login. Parameters are stored with the hash so they can grow.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` of ``password`` with a fresh random salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored`` (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                                  dklen=len(digest) // 2)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, bytes.fromhex(digest))


# Compared against when the account does not exist, so a wrong name costs as much as a wrong
# password and response times do not tell which account names exist. A constant (the hash of
# a random password that was thrown away), not hashed at import: one scrypt on every
# ``import zstack_core`` cost 50-200 ms of the node's start-up.
_DUMMY_HASH = ("scrypt$16384$8$1$fa36d8488e6f87b3a67d0eb21d4ea246$a8d3725"
               "f92b1b4bc6b46474ee030080a341aacf339ebb83a63249ffae0745f87")

# -- models -----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AccountInventory:
    uuid: str
    name: str
    type: str
    description: str = ""


class AccountVO(ResourceModel):
    RESOURCE_TYPE = "Account"
    INVENTORY = AccountInventory

    name = peewee.CharField(max_length=255, unique=True)
    type = peewee.CharField(max_length=32, default="Normal")
    description = peewee.TextField(default="")
    password_hash = peewee.CharField(max_length=255)

    class Meta:
        table_name = "account"


@attrs.frozen(kw_only=True)
class SessionInventory:
    uuid: str
    account_uuid: str
    expired_date: str
    """ISO 8601, UTC."""


class SessionVO(BaseModel):
    uuid = peewee.CharField(primary_key=True, max_length=32, default=new_uuid)
    account_uuid = peewee.CharField(max_length=32, index=True)
    created_at = peewee.DateTimeField(default=utcnow)
    expires_at = peewee.DateTimeField(index=True)

    class Meta:
        table_name = "session"

    def to_inventory(self) -> SessionInventory:
        return SessionInventory(uuid=self.uuid, account_uuid=self.account_uuid,
                                expired_date=self.expires_at.isoformat() + "Z")


@attrs.define(kw_only=True)
class SessionsEndedEvent(Event):
    """Sessions that ended before their expiry (``LogOut``; every session of a deleted account):
    each node drops them from its session cache. ``account_uuid``: all of that account's."""

    session_uuids: list[str] = attrs.field(factory=list)
    account_uuid: str | None = None


class SharedResourceVO(BaseModel):
    """A resource its owner lets other accounts see and use (not change): ZStack's sharing."""

    id = peewee.AutoField()
    resource_uuid = peewee.CharField(max_length=32, index=True)
    owner_account_uuid = peewee.CharField(max_length=32)
    receiver_account_uuid = peewee.CharField(max_length=32, null=True, index=True)
    to_public = peewee.BooleanField(default=False)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "shared_resource"
        indexes = ((("resource_uuid", "receiver_account_uuid", "to_public"), True),)


# -- API messages -----------------------------------------------------------------------------


@attrs.define(kw_only=True)
class APILogInByAccountMsg(APIMessage):
    """Log in; the reply's session UUID authenticates later calls (``Authorization: OAuth <uuid>``)."""

    SERVICE_ID = "identity"
    account_name: str
    password: str = attrs.field(repr=False)


@attrs.define(kw_only=True)
class APILogInReply(APIReply):
    inventory: SessionInventory | None = None


@attrs.define(kw_only=True)
class APILogOutMsg(APIMessage):
    """End a session: the caller's own, or (``uuid``) another session of the caller's account;
    admin may end any session."""

    SERVICE_ID = "identity"
    uuid: str | None = attrs.field(default=None, metadata={"resource": False})


@attrs.define(kw_only=True)
class APIValidateSessionMsg(APIMessage):
    """Whether session ``uuid`` is valid, and until when. Needs no session of its own."""

    SERVICE_ID = "identity"
    uuid: str = attrs.field(metadata={"resource": False})


@attrs.define(kw_only=True)
class APIValidateSessionReply(APIReply):
    valid: bool = False
    expired_date: str | None = None


@attrs.define(kw_only=True)
class APICreateAccountMsg(APIMessage):
    """Create an account (admin only)."""

    SERVICE_ID = "identity"
    name: str
    password: str = attrs.field(repr=False)
    type: str = "Normal"
    description: str = ""


@attrs.define(kw_only=True)
class APIUpdateAccountMsg(APIMessage):
    """Change an account's password, name or description. An account may update itself."""

    SERVICE_ID = "identity"
    uuid: str
    password: str | None = attrs.field(default=None, repr=False)
    name: str | None = None
    description: str | None = None


@attrs.define(kw_only=True)
class APIDeleteAccountMsg(APIMessage):
    """Delete an account that owns no resources (admin only); its sessions end."""

    SERVICE_ID = "identity"
    uuid: str


@attrs.define(kw_only=True)
class APIAccountEvent(APIEvent):
    inventory: AccountInventory | None = None


@attrs.define(kw_only=True)
class APIShareResourceMsg(APIMessage):
    """Let accounts (or every account, ``to_public``) see and use resources the caller owns."""

    SERVICE_ID = "identity"
    resource_uuids: list[str]
    account_uuids: list[str] = attrs.field(factory=list, metadata={"resource": False})
    to_public: bool = False


@attrs.define(kw_only=True)
class APIRevokeResourceSharingMsg(APIMessage):
    """Stop sharing resources with accounts (or with everyone, ``to_public``; ``all`` for both)."""

    SERVICE_ID = "identity"
    resource_uuids: list[str]
    account_uuids: list[str] = attrs.field(factory=list, metadata={"resource": False})
    to_public: bool = False
    all: bool = False


SESSION_FREE: tuple[type[APIMessage], ...] = (APILogInByAccountMsg, APIValidateSessionMsg)
"""APIs callable without a session: logging in, and checking a session UUID one holds."""

# -- runtime ----------------------------------------------------------------------------------


@attrs.frozen
class Caller:
    account_uuid: str
    account_type: str

    @property
    def is_admin(self) -> bool:
        return self.account_type == "SystemAdmin"


def is_normal(msg: APIMessage) -> bool:
    """True when ``msg`` comes from a session of a ``Normal`` account (ownership applies)."""
    return msg.headers.get("account_type") == "Normal"


class IdentityService(Service):
    """Accounts and sessions; creates the admin account on first start."""

    id = "identity"
    start_order = 0

    SESSION_CACHE_MAX = 100_000
    """Sessions kept in the cache at most (the oldest checked go first)."""
    session_clock = staticmethod(time.monotonic)
    """The clock the session cache's time-to-live is measured on (tests move it on)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sessions: dict[str, tuple[Caller, datetime.datetime, float]] = {}
        """session uuid -> (caller, expires_at, monotonic time it was read from the database)."""
        self._unsubscribe: Any = None

    async def start(self) -> None:
        created_password = await self.node.db.atomic(self._ensure_admin_sync)
        if created_password is not None:
            # Printed exactly once: only the start that creates the admin account gets here.
            print("zstack: created the admin account; its generated password is: " + created_password,
                  file=sys.stderr, flush=True)
        self.node.query.scopes.append(ownership_scope)
        self._unsubscribe = self.node.bus.subscribe(SessionsEndedEvent, self._sessions_ended)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._sessions.clear()

    def _cache_ttl(self) -> float:
        return float(self.node.properties.get("identity.session_cache_ttl", 5.0) or 0.0)

    def _sessions_ended(self, event: SessionsEndedEvent) -> None:
        self.forget_sessions(event.session_uuids, event.account_uuid)

    def forget_sessions(self, session_uuids: Sequence[str] = (), account_uuid: str | None = None) -> None:
        """Drop sessions from this node's cache (``account_uuid``: every session of it)."""
        for uuid in session_uuids:
            self._sessions.pop(uuid, None)
        if account_uuid is not None:
            for uuid in [u for u, (c, _, _) in self._sessions.items() if c.account_uuid == account_uuid]:
                self._sessions.pop(uuid, None)

    def _sessions_end(self, session_uuids: Sequence[str] = (), account_uuid: str | None = None) -> None:
        """Sessions ended here: out of this node's cache now, and of every peer's."""
        self.forget_sessions(session_uuids, account_uuid)
        self.node.bus.publish(SessionsEndedEvent(session_uuids=list(session_uuids), account_uuid=account_uuid))

    def _admin_password(self) -> tuple[str, bool]:
        password = os.environ.get("ZSTACK_ADMIN_PASSWORD") or self.node.properties.get("identity.admin_password")
        if password:
            return str(password), False
        return secrets.token_urlsafe(12), True

    def _ensure_admin_sync(self) -> str | None:
        if AccountVO.select().where(AccountVO.uuid == ADMIN_ACCOUNT_UUID).exists():
            return None
        password, generated = self._admin_password()
        try:
            with AccountVO._meta.database.atomic():  # a savepoint: another node may win the race
                AccountVO.create(uuid=ADMIN_ACCOUNT_UUID, name="admin", type="SystemAdmin",
                                 description="the administrator", password_hash=hash_password(password))
        except peewee.IntegrityError:
            return None  # nodes started together on a fresh database: the other one created it
        own_sync(ADMIN_ACCOUNT_UUID, "Account", ADMIN_ACCOUNT_UUID)
        log.info("created the admin account")
        return password if generated else None

    # -- sessions ---------------------------------------------------------------------------

    async def resolve(self, session_uuid: str) -> Caller:
        """The account of a valid session, or ``SYS.1013``; from the session cache when this
        node checked the session less than ``identity.session_cache_ttl`` seconds ago."""
        cached = self._sessions.get(session_uuid) if isinstance(session_uuid, str) else None
        if cached is not None:
            caller, expires_at, read_at = cached
            if expires_at > utcnow() and self.session_clock() - read_at < self._cache_ttl():
                return caller
            self._sessions.pop(session_uuid, None)

        def find() -> tuple[str, str, datetime.datetime] | None:
            row = (SessionVO.select(SessionVO.account_uuid, SessionVO.expires_at, AccountVO.type)
                   .join(AccountVO, on=(SessionVO.account_uuid == AccountVO.uuid))
                   .where(SessionVO.uuid == session_uuid).tuples().first())
            if row is None:
                return None
            account_uuid, expires_at, account_type = row
            if expires_at <= utcnow():
                SessionVO.delete().where(SessionVO.uuid == session_uuid).execute()
                return None
            return account_uuid, account_type, expires_at

        read_at = self.session_clock()
        found = await self.node.db.run(find) if isinstance(session_uuid, str) and len(session_uuid) <= 64 else None
        if found is None:
            raise SysErrors.exc("1013", "the session is invalid or expired: log in again (LogInByAccount)")
        caller = Caller(found[0], found[1])
        if self._cache_ttl() > 0:
            if len(self._sessions) >= self.SESSION_CACHE_MAX:
                self._sessions.pop(next(iter(self._sessions)))
            # ``read_at`` is taken before the read: a logout whose event arrived while the read
            # ran cannot be older than what is cached (the TTL counts from before the read).
            self._sessions[session_uuid] = (caller, found[2], read_at)
        return caller

    @handles(APILogInByAccountMsg)
    async def login(self, msg: APILogInByAccountMsg) -> APILogInReply:
        row = await self.node.db.run(lambda: AccountVO.get_or_none(AccountVO.name == msg.account_name))
        # Off the loop: scrypt is deliberately slow.
        ok = await asyncio.to_thread(verify_password, msg.password, row.password_hash if row else _DUMMY_HASH)
        if row is None or not ok:
            raise IdentityErrors.exc("1000", f"cannot log in as {msg.account_name!r}")
        timeout = int(self.node.configs.get("identity", "session.timeout"))

        def create() -> SessionVO:
            now = utcnow()
            SessionVO.delete().where(SessionVO.expires_at <= now).execute()
            return SessionVO.create(uuid=new_uuid(), account_uuid=row.uuid,
                                    expires_at=now + datetime.timedelta(seconds=timeout))

        session = await self.node.db.atomic(create)
        return APILogInReply(inventory=session.to_inventory())

    @handles(APILogOutMsg)
    async def logout(self, msg: APILogOutMsg) -> APIEvent:
        target = msg.uuid or msg.session_uuid
        caller = msg.account_uuid

        def end() -> None:
            if not target:
                return
            q = SessionVO.delete().where(SessionVO.uuid == target)
            if caller is not None and msg.headers.get("account_type") != "SystemAdmin":
                q = q.where(SessionVO.account_uuid == caller)
            q.execute()

        await self.node.db.run(end)
        if target:
            # Only a session the caller may end leaves the caches: ``end`` deleted nothing
            # otherwise, and dropping a cache entry is harmless (the next use reads the row).
            self._sessions_end([target])
        return APIEvent()

    @handles(APIValidateSessionMsg)
    async def validate(self, msg: APIValidateSessionMsg) -> APIValidateSessionReply:
        row = await self.node.db.run(lambda: SessionVO.get_or_none(SessionVO.uuid == msg.uuid))
        if row is None or row.expires_at <= utcnow():
            return APIValidateSessionReply(valid=False)
        return APIValidateSessionReply(valid=True, expired_date=row.to_inventory().expired_date)

    # -- accounts ---------------------------------------------------------------------------

    @staticmethod
    def _check_name(name: str) -> None:
        if not name.strip() or len(name) > 255:
            raise invalid_argument("an account name must be 1 to 255 characters", "name")

    @staticmethod
    def _check_password(password: str) -> None:
        if len(password) < 6 or len(password) > 1024:
            raise invalid_argument("a password must be 6 to 1024 characters", "password")

    @handles(APICreateAccountMsg)
    async def create_account(self, msg: APICreateAccountMsg) -> APIAccountEvent:
        self._check_name(msg.name)
        self._check_password(msg.password)
        if msg.type not in ACCOUNT_TYPES:
            raise invalid_argument(f"type must be one of {', '.join(ACCOUNT_TYPES)}", "type")
        password_hash = await asyncio.to_thread(hash_password, msg.password)

        def create() -> AccountVO:
            if AccountVO.select().where(AccountVO.name == msg.name).exists():
                raise SysErrors.exc("1015", f"an account named {msg.name!r} already exists", field="name")
            account = AccountVO.create(uuid=new_uuid(), name=msg.name, type=msg.type,
                                       description=msg.description, password_hash=password_hash)
            own_sync(account.uuid, "Account", account.uuid)  # an account sees and updates itself
            return account

        account = await self.node.db.atomic(create)
        return APIAccountEvent(inventory=account.to_inventory())

    @handles(APIUpdateAccountMsg)
    async def update_account(self, msg: APIUpdateAccountMsg) -> APIAccountEvent:
        if msg.name is not None:
            self._check_name(msg.name)
        password_hash = None
        if msg.password is not None:
            self._check_password(msg.password)
            password_hash = await asyncio.to_thread(hash_password, msg.password)

        def update() -> AccountVO:
            account = AccountVO.get_or_none(AccountVO.uuid == msg.uuid)
            if account is None:
                raise SysErrors.exc("1004", f"no account {msg.uuid}")
            if msg.name is not None and msg.name != account.name:
                if AccountVO.select().where(AccountVO.name == msg.name).exists():
                    raise SysErrors.exc("1015", f"an account named {msg.name!r} already exists", field="name")
                account.name = msg.name
            if msg.description is not None:
                account.description = msg.description
            if password_hash is not None:
                account.password_hash = password_hash
            account.save()
            return account

        account = await self.node.db.atomic(update)
        return APIAccountEvent(inventory=account.to_inventory())

    @handles(APIDeleteAccountMsg)
    async def delete_account(self, msg: APIDeleteAccountMsg) -> APIEvent:
        if msg.uuid == ADMIN_ACCOUNT_UUID:
            raise IdentityErrors.exc("1001", "the admin account cannot be deleted")

        def delete() -> None:
            if not AccountVO.select().where(AccountVO.uuid == msg.uuid).exists():
                raise SysErrors.exc("1004", f"no account {msg.uuid}")
            owned = (AccountResourceRefVO.select().where((AccountResourceRefVO.account_uuid == msg.uuid)
                                                         & (AccountResourceRefVO.resource_uuid != msg.uuid)).count())
            if owned:
                raise IdentityErrors.exc("1002", f"account {msg.uuid} still owns {owned} resources; delete them first")
            SessionVO.delete().where(SessionVO.account_uuid == msg.uuid).execute()
            SharedResourceVO.delete().where((SharedResourceVO.receiver_account_uuid == msg.uuid)
                                            | (SharedResourceVO.owner_account_uuid == msg.uuid)).execute()
            AccountVO.delete().where(AccountVO.uuid == msg.uuid).execute()
            disown_sync(msg.uuid)

        await self.node.db.atomic(delete)
        self._sessions_end(account_uuid=msg.uuid)
        return APIEvent()

    # -- sharing ----------------------------------------------------------------------------

    def _check_owned_sync(self, msg: APIMessage, resource_uuids: Sequence[str]) -> dict[str, str]:
        """``uuid -> owner`` for every resource; a Normal caller must own each."""
        refs = {r.resource_uuid: r.account_uuid for r in
                AccountResourceRefVO.select().where(AccountResourceRefVO.resource_uuid.in_(list(resource_uuids)))}
        for uuid in resource_uuids:
            if uuid not in refs:
                raise SysErrors.exc("1004", f"no resource {uuid} with a recorded owner", field="resourceUuids")
            if is_normal(msg) and refs[uuid] != msg.account_uuid:
                raise SysErrors.exc("1012", f"resource {uuid} is not yours to share")
        return refs

    @handles(APIShareResourceMsg)
    async def share(self, msg: APIShareResourceMsg) -> APIEvent:
        if not msg.to_public and not msg.account_uuids:
            raise invalid_argument("give accountUuids or toPublic", "accountUuids")

        def share() -> None:
            refs = self._check_owned_sync(msg, msg.resource_uuids)
            known = {a.uuid for a in AccountVO.select(AccountVO.uuid).where(AccountVO.uuid.in_(msg.account_uuids))}
            for account in msg.account_uuids:
                if account not in known:
                    raise SysErrors.exc("1004", f"no account {account}", field="accountUuids")
            receivers: list[str | None] = [*msg.account_uuids, *([None] if msg.to_public else [])]
            for uuid in msg.resource_uuids:
                for receiver in receivers:
                    SharedResourceVO.insert(resource_uuid=uuid, owner_account_uuid=refs[uuid],
                                            receiver_account_uuid=receiver,
                                            to_public=receiver is None).on_conflict_ignore().execute()

        await self.node.db.atomic(share)
        return APIEvent()

    @handles(APIRevokeResourceSharingMsg)
    async def revoke(self, msg: APIRevokeResourceSharingMsg) -> APIEvent:
        def revoke() -> None:
            self._check_owned_sync(msg, msg.resource_uuids)
            q = SharedResourceVO.delete().where(SharedResourceVO.resource_uuid.in_(msg.resource_uuids))
            if not msg.all:
                cond = SharedResourceVO.receiver_account_uuid.in_(msg.account_uuids)
                if msg.to_public:
                    cond = cond | (SharedResourceVO.to_public == True)  # noqa: E712 (peewee expression)
                q = q.where(cond)
            q.execute()

        await self.node.db.atomic(revoke)
        return APIEvent()


# -- enforcement ------------------------------------------------------------------------------


class SessionInterceptor(ApiInterceptor):
    """Runs first: turns the message's session into its account, or refuses the message."""

    name = "SessionInterceptor"
    order = -1000

    async def intercept(self, msg: APIMessage, node: Any) -> APIMessage:
        if isinstance(msg, SESSION_FREE):
            return msg
        if "account_type" in msg.headers:  # the HTTP layer resolved the session already
            caller = Caller(msg.headers["account_uuid"], msg.headers["account_type"])
        elif msg.session_uuid is None:
            if msg.headers.get(REQUIRE_SESSION):
                raise SysErrors.exc("1013", f"{msg.api_name()} needs a session: log in with LogInByAccount and "
                                            "send 'Authorization: OAuth <session uuid>'")
            return msg  # an in-process call: the embedding program is trusted and acts as admin
        else:
            caller = await node.services["identity"].resolve(msg.session_uuid)
            msg.headers["account_uuid"] = caller.account_uuid
            msg.headers["account_type"] = caller.account_type
        if not caller.is_admin and getattr(node.api.registration_of(msg), "admin_only", False):
            raise SysErrors.exc("1012", f"{msg.api_name()} is for the admin account only")
        return msg


@functools.cache
def resource_fields(cls: type[APIMessage]) -> tuple[tuple[str, bool, bool], ...]:
    """``(attribute, is_list, is_target)`` for each field of ``cls`` naming a resource UUID.

    ``uuid`` and ``resource_uuid`` are the resource acted on (must be the caller's); other
    ``*_uuid``/``*_uuids`` fields are resources used (the caller's, or shared with it).
    """
    out = []
    for a in attrs.fields(cls):
        if a.metadata.get("json") is False or a.metadata.get("resource") is False:
            continue
        if a.name in ("uuid", "resource_uuid"):
            out.append((a.name, False, True))
        elif a.name.endswith("_uuid"):
            out.append((a.name, False, False))
        elif a.name.endswith("_uuids"):
            out.append((a.name, True, False))
    return tuple(out)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _shared_with(account_uuid: str) -> Any:
    return SharedResourceVO.select(SharedResourceVO.resource_uuid).where(
        (SharedResourceVO.receiver_account_uuid == account_uuid) | (SharedResourceVO.to_public == True))  # noqa: E712


def _owned_by(account_uuid: str) -> Any:
    return AccountResourceRefVO.select(AccountResourceRefVO.resource_uuid).where(
        AccountResourceRefVO.account_uuid == account_uuid)


class OwnershipInterceptor(ApiInterceptor):
    """Refuses a Normal account's message that names another account's resource (``SYS.1012``)."""

    name = "OwnershipInterceptor"
    order = -999

    async def intercept(self, msg: APIMessage, node: Any) -> APIMessage:
        if not is_normal(msg):
            return msg
        route = node.api.registration_of(msg).route
        in_path: set[str] = set()
        if route is not None and route[0].upper() != "GET":
            in_path = {_snake(p) for p in re.findall(r"\{([A-Za-z0-9_]+)\}", route[1])}
        wanted: list[tuple[str, str, bool]] = []  # (uuid, field, is_target)
        for attr, is_list, target in resource_fields(type(msg)):
            target = target or attr in in_path
            value = getattr(msg, attr)
            for v in (value or []) if is_list else [value]:
                if isinstance(v, str) and v:
                    wanted.append((v, attr, target))
        if not wanted:
            return msg
        account = msg.account_uuid
        assert account is not None
        models = [m for _, reg in node.model_registrations.values() for m in reg.models if "uuid" in m._meta.fields]

        def check() -> tuple[str, str] | None:
            uuids = list({u for u, _, _ in wanted})
            owners = {r.resource_uuid: r.account_uuid for r in
                      AccountResourceRefVO.select().where(AccountResourceRefVO.resource_uuid.in_(uuids))}
            shared = {r.resource_uuid for r in _shared_with(account).where(SharedResourceVO.resource_uuid.in_(uuids))}
            for uuid, attr, target in wanted:
                owner = owners.get(uuid)
                if owner == account:
                    continue
                if owner is None and not any(m.select().where(m.uuid == uuid).exists() for m in models):
                    continue  # no such resource (yet): the service answers "not found" or creates it
                if not target and uuid in shared:
                    continue
                return uuid, attr
            return None

        denied = await node.db.run(check)
        if denied is not None:
            from .serialize import camel

            raise SysErrors.exc("1012", f"resource {denied[0]} ({camel(denied[1])}) does not belong to your account",
                                field=camel(denied[1]))
        return msg


def ownership_scope(msg: APIQueryMessage, resource: QueryableResource, query: Any) -> Any:
    """Query scope: a Normal account sees its own resources, those shared with it, and what is
    attached to them (rows with a ``resource_uuid``, such as system tags). Resources without a
    UUID (global configs) are system-wide settings everyone may read."""
    if not is_normal(msg):
        return query
    model = resource.model
    fields = model._meta.fields
    account = msg.account_uuid
    visible = _owned_by(account).union(_shared_with(account))  # type: ignore[arg-type]
    cond = None
    for name in ("uuid", "resource_uuid"):
        if name in fields:
            expr = fields[name].in_(visible)
            cond = expr if cond is None else (cond | expr)
    return query if cond is None else query.where(cond)


# -- registrations (collected by the kernel's plugin, :mod:`zstack_core.builtin`) --------------

MODELS = ModelRegistration(name="zstack_identity", models=[AccountVO, SessionVO, SharedResourceVO])

GLOBAL_CONFIGS = [
    GlobalConfig(category="identity", name="session.timeout", type="int", default=7200,
                 validators=[Range(min=1, max=10 * 365 * 86400)],
                 description="seconds a session stays valid after LogInByAccount"),
]

GLOBAL_PROPERTIES = [
    GlobalProperty(section="identity", name="admin_password", default=None,
                   description="password of the admin account created at first start "
                               "(ZSTACK_ADMIN_PASSWORD wins; generated and printed once if neither is set)"),
    GlobalProperty(section="identity", name="session_cache_ttl", type="float", default=5.0,
                   description="seconds a node trusts a session it read from the database before reading it "
                               "again (0: no cache); logout and account deletion reach every node's cache at "
                               "once, this bounds how long a node that missed that news accepts the session"),
]


def api_registrations() -> list[ApiRegistration]:
    return [
        ApiRegistration(message=APILogInByAccountMsg, route=("PUT", "/v1/accounts/login"), resource="Account"),
        ApiRegistration(message=APILogOutMsg, route=("DELETE", "/v1/accounts/sessions"), resource="Account"),
        ApiRegistration(message=APIValidateSessionMsg, route=("GET", "/v1/accounts/sessions/{uuid}/valid"),
                        resource="Account"),
        ApiRegistration(message=APICreateAccountMsg, route=("POST", "/v1/accounts"), resource="Account",
                        admin_only=True),
        ApiRegistration(message=APIUpdateAccountMsg, route=("PUT", "/v1/accounts/{uuid}/actions"), resource="Account"),
        ApiRegistration(message=APIDeleteAccountMsg, route=("DELETE", "/v1/accounts/{uuid}"), resource="Account",
                        admin_only=True),
        ApiRegistration(message=APIShareResourceMsg, route=("PUT", "/v1/accounts/resources/actions")),
        ApiRegistration(message=APIRevokeResourceSharingMsg, route=("PUT", "/v1/accounts/resources/actions")),
    ]


QUERYABLE = [QueryableResource(name="Account", model=AccountVO, inventory=AccountInventory)]

INTERCEPTORS: list[ApiInterceptor] = [SessionInterceptor(), OwnershipInterceptor()]

