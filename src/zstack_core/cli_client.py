"""The client side of the ``zstack`` command: ``login``, ``logout``, ``api``, ``query``.

They talk to a running node over HTTP with :mod:`zstack_core.sdk`. ``zstack login`` keeps the
session in ``~/.config/zstack/session.json`` (``$XDG_CONFIG_HOME`` respected, mode 0600); the node's
URL comes from ``--url``, ``$ZSTACK_URL``, the session file, or ``http://127.0.0.1:8080``.

Exit status: 0 success; 1 the API refused or failed (the ErrorCode is printed); 2 bad usage;
3 the node cannot be reached.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .errors import ErrorCode

if TYPE_CHECKING:
    from .sdk import Client

# ``requests`` and the SDK are imported by the commands that use them, not here: ``zstack node
# start`` builds this parser too, and importing them cost its start-up 40-90 ms (benchmarks).

__all__ = ["add_client_commands", "session_file"]

DEFAULT_URL = "http://127.0.0.1:8080"


def session_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "zstack" / "session.json"


def _load_session() -> dict[str, Any]:
    try:
        data = json.loads(session_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_session(data: Mapping[str, Any]) -> None:
    path = session_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created 0600 from the start: the session UUID is a credential.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dict(data), f, indent=2)
    os.chmod(path, 0o600)


def _url(args: argparse.Namespace, saved: Mapping[str, Any]) -> str:
    return str(args.url or os.environ.get("ZSTACK_URL") or saved.get("url") or DEFAULT_URL)


def _client(args: argparse.Namespace) -> Client:
    from .sdk import Client

    saved = _load_session()
    url = _url(args, saved)
    session = saved.get("sessionUuid") if saved.get("url", url) == url else None
    return Client(url, session_uuid=session)


# -- output -----------------------------------------------------------------------------------


def print_error(error: ErrorCode, out: TextIO = sys.stderr) -> None:
    """``zstack: SYS.1007 invalid argument: ...`` then one line per cause."""
    print(f"zstack: {error.code} {error.description}" + (f": {error.details}" if error.details else ""), file=out)
    for cause in error.chain()[1:]:
        print(f"  caused by {cause.code} {cause.description}" + (f": {cause.details}" if cause.details else ""),
              file=out)
    if error.code == "SYS.1013":
        print("  (log in with: zstack login --account NAME)", file=out)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render_table(rows: Sequence[Mapping[str, Any]], out: TextIO = sys.stdout) -> None:
    """Rows as aligned columns, keys as the header (first row's order, then any new keys)."""
    if not rows:
        print("(none)", file=out)
        return
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [min(60, max(len(c), *(len(r[i]) for r in cells))) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v[:60].ljust(w) for v, w in zip(values, widths)).rstrip()

    print(line(columns), file=out)
    print(line(["-" * w for w in widths]), file=out)
    for r in cells:
        print(line(r), file=out)


def render_reply(reply: Mapping[str, Any], out: TextIO = sys.stdout) -> None:
    """A reply as a human reads it: inventories as a table, one inventory as key/value lines."""
    if isinstance(reply.get("inventories"), list):
        render_table(reply["inventories"], out)
        if reply.get("total") is not None:
            print(f"total: {reply['total']}", file=out)
        return
    shown = False
    for key, value in reply.items():
        if isinstance(value, dict):
            width = max((len(k) for k in value), default=0)
            for k, v in value.items():
                print(f"{k.ljust(width)}  {_cell(v)}", file=out)
            shown = True
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            render_table(value, out)
            shown = True
        elif value is not None:
            print(f"{key}  {_cell(value)}", file=out)
            shown = True
    if not shown:
        print("ok", file=out)


class ProgressBar:
    """A one-line text progress bar on stderr, redrawn as the job reports progress."""

    def __init__(self, label: str, out: TextIO = sys.stderr, width: int = 30) -> None:
        self.label, self.out, self.width = label, out, width
        self.drawn = False

    def __call__(self, value: int | None) -> None:
        if value is None:
            return
        filled = self.width * max(0, min(100, value)) // 100
        self.out.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {value:3d}%")
        self.out.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.out.flush()


# -- commands ---------------------------------------------------------------------------------


def _run(fn: Callable[[], int]) -> int:
    import requests

    from .sdk import ZStackApiError

    try:
        return fn()
    except ZStackApiError as exc:
        print_error(exc.error)
        return 1
    except requests.ConnectionError as exc:
        print(f"zstack: cannot reach the management node: {exc}", file=sys.stderr)
        return 3
    except requests.RequestException as exc:
        print(f"zstack: HTTP request failed: {exc}", file=sys.stderr)
        return 3


def cmd_login(args: argparse.Namespace) -> int:
    saved = _load_session()
    url = _url(args, saved)
    account = args.account or os.environ.get("ZSTACK_ACCOUNT") or "admin"
    password = args.password if args.password is not None else os.environ.get("ZSTACK_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            print("zstack: no password: give --password, set ZSTACK_PASSWORD, or run in a terminal", file=sys.stderr)
            return 2
        password = getpass.getpass(f"password for {account}@{url}: ")

    def login() -> int:
        from .sdk import Client

        client = Client(url)
        session = client.login(account, password)
        _save_session({"url": url, "account": account, "sessionUuid": session["uuid"],
                       "expiredDate": session.get("expiredDate")})
        print(f"logged in to {url} as {account} (session expires {session.get('expiredDate')})")
        return 0

    return _run(login)


def cmd_logout(args: argparse.Namespace) -> int:
    def logout() -> int:
        client = _client(args)
        if client.session_uuid:
            client.logout()
        _save_session({"url": client.url.rstrip("/")})  # keep the node's address, forget the session
        print("logged out")
        return 0

    return _run(logout)


def parse_assignments(pairs: Sequence[str], fields: Mapping[str, Any]) -> dict[str, Any]:
    """``["memorySize=1024", "name=vm1"]`` -> typed values by the API's field schemas.

    Keys may be camelCase (as on the wire) or snake_case. Raises ``ValueError`` on bad input.
    """
    # Here, not at the top: `zstack node start` builds the parser of these commands, and the
    # HTTP package (starlette, uvicorn) is not needed before the node is up.
    from .http.schema import coerce_text

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {pair!r}")
        head, *rest = key.split("_")
        key = head + "".join(p[:1].upper() + p[1:] for p in rest)
        schema = fields.get(key)
        if schema is None:
            known = ", ".join(fields) or "none"
            raise ValueError(f"unknown parameter {key!r}; this API takes: {known}")
        try:
            out[key] = coerce_text(text, schema)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return out


def cmd_api(args: argparse.Namespace) -> int:
    def call() -> int:
        client = _client(args)
        info = client.api(args.api_name)
        try:
            params = parse_assignments(args.params, info["fields"])
        except ValueError as exc:
            print(f"zstack: {exc}", file=sys.stderr)
            return 2
        tags = params.pop("systemTags", None) or []
        tags += args.system_tag or []
        bar = ProgressBar(args.api_name) if not args.quiet else None
        try:
            reply = client.call(args.api_name, system_tags=tags or None, progress=bar, **params)
        finally:
            if bar is not None:
                bar.close()
        if args.json:
            print(json.dumps(reply, indent=2))
        else:
            render_reply(reply)
        return 0

    return _run(call)


def cmd_query(args: argparse.Namespace) -> int:
    def query() -> int:
        client = _client(args)
        result = client.query(args.resource, args.conditions, limit=args.limit, start=args.start, sort=args.sort,
                              count=args.count, reply_with_count=args.with_count)
        if args.count:
            print(json.dumps({"total": result}) if args.json else result)
            return 0
        inventories, total = result if args.with_count else (result, None)
        if args.json:
            print(json.dumps({"inventories": inventories, **({"total": total} if total is not None else {})},
                             indent=2))
        else:
            render_reply({"inventories": inventories, "total": total})
        return 0

    return _run(query)


def add_client_commands(sub: Any) -> None:
    """Add ``login``, ``logout``, ``api`` and ``query`` to the ``zstack`` parser's subcommands."""

    def url_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help=f"the node's HTTP API (default: $ZSTACK_URL, the logged-in node, or {DEFAULT_URL})")

    login = sub.add_parser("login", help="log in to a node and keep the session for later commands")
    url_option(login)
    login.add_argument("--account", help="account name (default: $ZSTACK_ACCOUNT or admin)")
    login.add_argument("--password", help="password (default: $ZSTACK_PASSWORD, else asked)")
    login.set_defaults(func=cmd_login)

    logout = sub.add_parser("logout", help="end the kept session")
    url_option(logout)
    logout.set_defaults(func=cmd_logout)

    api = sub.add_parser("api", help="call an API: zstack api CreateZone name=zone1")
    url_option(api)
    api.add_argument("api_name", metavar="APIName")
    api.add_argument("params", nargs="*", metavar="key=value",
                     help="parameters, parsed by the API's schema (lists: a,b or JSON; objects: JSON)")
    api.add_argument("--system-tag", action="append", help="a system tag (repeatable)")
    api.add_argument("--json", action="store_true", help="print the reply as JSON")
    api.add_argument("--quiet", action="store_true", help="no progress bar")
    api.set_defaults(func=cmd_api)

    query = sub.add_parser("query", help="query a resource: zstack query VmInstance state=Running")
    url_option(query)
    query.add_argument("resource", metavar="Resource")
    query.add_argument("conditions", nargs="*", metavar="condition",
                       help="name=value, name!=value, name>1, name<1, name>=1, name<=1, name?=a,b, name~=%%x%%")
    query.add_argument("--limit", type=int)
    query.add_argument("--start", type=int)
    query.add_argument("--sort", help="+field or -field")
    query.add_argument("--count", action="store_true", help="print only the number of matches")
    query.add_argument("--with-count", action="store_true", help="also print the total number of matches")
    query.add_argument("--json", action="store_true", help="print JSON")
    query.set_defaults(func=cmd_query)
