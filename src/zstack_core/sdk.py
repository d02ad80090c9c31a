"""A Python client of the node's HTTP API, on ``requests``.

::

    from zstack_core.sdk import Client

    with Client("http://127.0.0.1:8080") as client:
        client.login("admin", "password")
        zone = client.call("CreateZone", name="zone1")["inventory"]
        hosts = client.query("Host", ["status=Connected", "totalMemory>1073741824"])

``call`` finds each API's route in the server's ``/v1/apis`` table (so it serves whatever plugins
the node has), fills path placeholders, waits for long APIs' jobs (``progress=`` gets 0-100 as
the job reports it) and raises :class:`ZStackApiError` carrying the :class:`ErrorCode` on failure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urljoin

import requests

from .errors import ErrorCode

__all__ = ["Client", "ZStackApiError", "condition_text"]

Condition = str | tuple[str, str, Any]


class ZStackApiError(Exception):
    """An API call failed; ``error`` is the server's :class:`ErrorCode`, ``status`` the HTTP status."""

    def __init__(self, error: ErrorCode, status: int = 0) -> None:
        super().__init__(str(error))
        self.error = error
        self.status = status

    @property
    def code(self) -> str:
        return self.error.code


def condition_text(cond: Condition) -> str:
    """``("memorySize", ">", 1024)`` -> ``memorySize>1024``; text is passed through."""
    if isinstance(cond, str):
        return cond
    name, op, value = cond
    op = {"in": "?=", "not in": "!?=", "like": "~=", "not like": "!~="}.get(op.strip().lower(), op.strip())
    if op in ("is null", "is not null"):
        return f"{name} {op}"
    if isinstance(value, (list, tuple, set)):
        value = ",".join(str(v) for v in value)
    elif isinstance(value, bool):
        value = "true" if value else "false"
    return f"{name}{op}{value}"


class Client:
    """A connection to one management node. Use as a context manager to log out on exit."""

    def __init__(self, url: str, session_uuid: str | None = None, *, timeout: float = 30.0,
                 poll_interval: float = 0.2, job_hold: float = 10.0,
                 session: requests.Session | None = None) -> None:
        """``timeout``: of each HTTP request. A long API's job is polled with the node holding
        each poll up to ``job_hold`` seconds (at most half of ``timeout``) until the job ends;
        ``poll_interval`` spaces the polls a node answers at once."""
        self.url = url.rstrip("/") + "/"
        self.session_uuid = session_uuid
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.job_hold = max(0.0, min(job_hold, timeout / 2))
        self.http = session or requests.Session()
        self._apis: dict[str, dict[str, Any]] | None = None
        self._logged_in_here = False

    # -- plumbing -----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"OAuth {self.session_uuid}"} if self.session_uuid else {}

    def request(self, method: str, path: str, *, params: Any = None, body: Any = None) -> requests.Response:
        """One HTTP request to ``path`` (relative to the node's URL), with the session."""
        data = None if body is None else json.dumps(body)
        headers = self._headers()
        if data is not None:
            headers["Content-Type"] = "application/json"
        return self.http.request(method, urljoin(self.url, path.lstrip("/")), params=params, data=data,
                                 headers=headers, timeout=self.timeout)

    @staticmethod
    def _raise_for(response: requests.Response) -> None:
        if response.status_code < 400:
            return
        try:
            error = ErrorCode.from_dict(response.json()["error"])
        except (ValueError, KeyError, TypeError):
            error = ErrorCode(code="SYS.1000", description="internal error",
                              details=f"HTTP {response.status_code}: {response.text[:500]}")
        raise ZStackApiError(error, response.status_code)

    def apis(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """API name -> its route and field schemas, from the server's ``/v1/apis``."""
        if self._apis is None or refresh:
            response = self.request("GET", "/v1/apis")
            self._raise_for(response)
            self._apis = {a["name"]: a for a in response.json()["apis"]}
        return self._apis

    def api(self, name: str) -> dict[str, Any]:
        apis = self.apis()
        if name not in apis:
            import difflib

            close = difflib.get_close_matches(name, list(apis), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ZStackApiError(ErrorCode(code="SYS.1008", description="unknown API",
                                           details=f"the node has no API named {name!r}{hint}"), 404)
        return apis[name]

    # -- sessions -----------------------------------------------------------------------------

    def login(self, account: str, password: str) -> dict[str, Any]:
        """Log in; later calls use the session. Returns the session inventory."""
        reply = self.call("LogInByAccount", account_name=account, password=password)
        self.session_uuid = reply["inventory"]["uuid"]
        self._logged_in_here = True
        return dict(reply["inventory"])

    def logout(self) -> None:
        """End the session (if any)."""
        if self.session_uuid is None:
            return
        try:
            self.call("LogOut")
        except ZStackApiError as exc:
            if exc.code != "SYS.1013":  # already expired: nothing to end
                raise
        finally:
            self.session_uuid = None
            self._logged_in_here = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._logged_in_here:
            try:
                self.logout()
            except (ZStackApiError, requests.RequestException):
                pass
        self.http.close()

    # -- calling ------------------------------------------------------------------------------

    def call(self, api_name: str, *, system_tags: Sequence[str] | None = None, user_tags: Sequence[str] | None = None,
             progress: Callable[[int | None], None] | None = None, wait: float | None = 600.0,
             **params: Any) -> dict[str, Any]:
        """Call ``api_name`` with ``params`` (snake_case or camelCase names); return the reply.

        A long API is polled until done (at most ``wait`` seconds; None: forever); ``progress``
        is called with each new progress value the job reports.
        """
        info = self.api(api_name)
        body = {_camel(k): v for k, v in params.items()}
        if info["query"]:
            return self._query(info, body.pop("conditions", []), **body)
        path = info["path"]
        for placeholder in _placeholders(path):
            if placeholder not in body:
                raise ZStackApiError(ErrorCode(code="SYS.1007", description="invalid argument",
                                               details=f"{api_name} needs {placeholder!r} (it is in the path)",
                                               opaque={"field": placeholder}), 400)
            path = path.replace("{" + placeholder + "}", requests.utils.quote(str(body.pop(placeholder)), safe=""))
        method = info["method"]
        if method in ("POST", "PUT"):
            key = "params" if method == "POST" else info["actionKey"]
            payload: dict[str, Any] = {key: body}
            if system_tags:
                payload["systemTags"] = list(system_tags)
            if user_tags:
                payload["userTags"] = list(user_tags)
            response = self.request(method, path, body=payload)
        else:
            query: list[tuple[str, str]] = []
            for key, value in body.items():
                if value is None:
                    continue  # the field's default
                query.append((key, value if isinstance(value, str) else json.dumps(value)))
            if system_tags:
                query.append(("systemTags", json.dumps(list(system_tags))))
            if self._shares_route(info):
                query.append(("api", api_name))
            response = self.request(method, path, params=query)
        self._raise_for(response)
        if response.status_code == 202:
            return self.wait_job(response.json()["jobId"], progress=progress, wait=wait)
        return dict(response.json())

    def _shares_route(self, info: Mapping[str, Any]) -> bool:
        return sum(1 for a in self.apis().values() if a["path"] == info["path"] and a["method"] == info["method"]) > 1

    def wait_job(self, job_id: str, *, progress: Callable[[int | None], None] | None = None,
                 wait: float | None = 600.0) -> dict[str, Any]:
        """Poll ``/v1/api-jobs/{job_id}`` until it ends; return its result or raise its error."""
        deadline = None if wait is None else time.monotonic() + wait
        last: int | None = None
        while True:
            # The node holds the poll until the job ends (waitSeconds): an answer as soon as it
            # is known. Shorter holds while someone watches the progress.
            hold = 1.0 if progress is not None else self.job_hold
            if deadline is not None:
                hold = max(0.0, min(hold, deadline - time.monotonic()))
            asked = time.monotonic()
            response = self.request("GET", f"/v1/api-jobs/{job_id}", params={"waitSeconds": f"{hold:.3f}"})
            self._raise_for(response)
            if response.status_code != 202:
                if progress is not None and last != 100:
                    progress(100)
                return dict(response.json())
            value = response.json().get("progress")
            if progress is not None and value != last:
                progress(value)
            last = value
            if deadline is not None and time.monotonic() > deadline:
                raise ZStackApiError(ErrorCode(code="SYS.1001", description="operation timeout",
                                               details=f"job {job_id} still running after {wait:g}s"), 504)
            # A node that did not hold the poll (the job runs on another node, or an older
            # node): ask again after the poll interval.
            time.sleep(max(0.0, self.poll_interval - (time.monotonic() - asked)))

    def query(self, resource: str, conditions: Iterable[Condition] | Mapping[str, Any] = (), *,
              limit: int | None = None, start: int | None = None, sort: str | None = None,
              count: bool = False, reply_with_count: bool = False) -> Any:
        """``Query<resource>``: the matching inventories (a list); with ``count`` the number;
        with ``reply_with_count`` ``(inventories, total)``.

        Conditions are text (``"memorySize>1024"``), ``(name, op, value)`` tuples or a mapping of
        name -> value (equality). ``sort`` is ``"+name"`` or ``"-name"``.
        """
        info = self.api(f"Query{resource}")
        return self._query(info, conditions, limit=limit, start=start, sort=sort, count=count,
                           replyWithCount=reply_with_count)

    def _query(self, info: Mapping[str, Any], conditions: Any, *, limit: int | None = None,
               start: int | None = None, sort: str | None = None, count: bool = False,
               replyWithCount: bool = False, **extra: Any) -> Any:
        if extra:
            raise ZStackApiError(ErrorCode(code="SYS.1007", description="invalid argument",
                                           details=f"a query takes conditions, limit, start, sort, count, "
                                                   f"reply_with_count; not {', '.join(extra)}"), 400)
        if isinstance(conditions, Mapping):
            conditions = [(k, "=", v) for k, v in conditions.items()]
        params: list[tuple[str, str]] = [("q", condition_text(c)) for c in conditions]
        if limit is not None:
            params.append(("limit", str(limit)))
        if start is not None:
            params.append(("start", str(start)))
        if sort:
            params.append(("sort", sort if sort[0] in "+-" else "+" + sort))
        if count:
            params.append(("count", "true"))
        if replyWithCount:
            params.append(("replyWithCount", "true"))
        response = self.request("GET", info["path"], params=params)
        self._raise_for(response)
        data = response.json()
        if count:
            return int(data["total"])
        if replyWithCount:
            return data["inventories"], int(data["total"])
        return data["inventories"]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _placeholders(path: str) -> list[str]:
    import re

    return re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", path)
