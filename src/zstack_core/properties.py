"""Global properties: start-up settings (ZStack's ``zstack.properties`` and ``@GlobalProperty``).

Plugins declare the keys they read; the node reads them from one file, ``zstack.toml``, and lets
``ZSTACK_<SECTION>_<NAME>`` environment variables override it. Because every key is declared, an
unknown key is an error that names the closest known one: a typo never silently falls back to
a default.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import tomli

__all__ = ["ConfigError", "GlobalProperty", "Properties", "load_toml"]


class ConfigError(Exception):
    """The configuration is wrong; the message names the key, the file and line, and a fix."""


_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
}


@attrs.frozen(kw_only=True)
class GlobalProperty:
    """One start-up setting: ``[section] name = value`` in ``zstack.toml``.

    ``type`` is ``str``, ``int``, ``float``, ``bool`` or ``list`` (of strings).
    """

    section: str
    name: str
    type: str = "str"
    default: Any = None
    description: str = ""
    required: bool = False

    def __attrs_post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"property {self.key}: type must be one of {sorted(_TYPES)}")

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env_var(self) -> str:
        return "ZSTACK_" + re.sub(r"[^A-Za-z0-9]", "_", f"{self.section}_{self.name}").upper()

    def parse_env(self, text: str) -> Any:
        """Turn an environment variable's text into this property's type."""
        if self.type == "str":
            return text
        if self.type == "list":
            return [p.strip() for p in text.split(",") if p.strip()]
        if self.type == "bool":
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"expected true/false, got {text!r}")
        if self.type == "int":
            return int(text)
        return float(text)

    def check(self, value: Any) -> Any:
        ok = _TYPES[self.type]
        if isinstance(value, bool) and self.type != "bool":
            raise ValueError(f"expected {self.type}, got bool")
        if not isinstance(value, ok):
            raise ValueError(f"expected {self.type}, got {type(value).__name__} {value!r}")
        if self.type == "list" and not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of strings")
        return float(value) if self.type == "float" else value


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomli.load(f)
    except tomli.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None


def _line_of(path: Path | None, section: str, name: str | None) -> int | None:
    """The line of ``[section] name`` in ``path`` (tomli keeps no positions for valid files)."""
    if path is None or not path.exists():
        return None
    current = ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"^\[([^\[\]]+)\]", stripped)
        if header:
            current = header.group(1).strip()
            if name is None and current == section:
                return number
            continue
        key = re.match(r"^([A-Za-z0-9_.\-\"']+)\s*=", stripped)
        if key and name is not None:
            k = key.group(1).strip("\"'")
            if (current == section and k == name) or (not current and k == f"{section}.{name}"):
                return number
    return None


class Properties:
    """The resolved value of every declared property."""

    def __init__(self, declared: Iterable[GlobalProperty]) -> None:
        self.declared: dict[str, GlobalProperty] = {}
        for prop in declared:
            if prop.key in self.declared:
                raise ConfigError(f"global property {prop.key} is declared twice")
            self.declared[prop.key] = prop
        self.values: dict[str, Any] = {k: p.default for k, p in self.declared.items()}
        self.sources: dict[str, str] = {k: "default" for k in self.declared}

    def _where(self, path: Path | None, section: str, name: str | None) -> str:
        if path is None:
            return "in the configuration"
        line = _line_of(path, section, name)
        return f"in {path}" + (f", line {line}" if line else "")

    def _closest(self, key: str) -> str:
        close = difflib.get_close_matches(key, list(self.declared), n=1, cutoff=0.5)
        return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(self.declared))}"

    def load(self, data: Mapping[str, Any], path: Path | None = None,
             environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> None:
        """Apply file ``data`` (parsed TOML), then environment variables, then ``overrides``
        (keyword arguments given to the node). Raise :class:`ConfigError` on the first problem."""
        environ = os.environ if environ is None else environ
        sections = {p.section for p in self.declared.values()}
        for section, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(f"unknown top-level key {section!r} {self._where(path, section, None)}: "
                                  f"settings live in sections such as [node]{self._closest(section)}")
            if section not in sections:
                close = difflib.get_close_matches(section, sorted(sections), n=1)
                hint = f"; did you mean [{close[0]}]?" if close else f"; known sections: {', '.join(sorted(sections))}"
                raise ConfigError(f"unknown section [{section}] {self._where(path, section, None)}{hint}")
            for name, value in table.items():
                key = f"{section}.{name}"
                prop = self.declared.get(key)
                if prop is None:
                    raise ConfigError(f"unknown key {key!r} {self._where(path, section, name)}{self._closest(key)}")
                try:
                    self.values[key] = prop.check(value)
                except ValueError as exc:
                    raise ConfigError(f"{key} {self._where(path, section, name)}: {exc}") from None
                self.sources[key] = str(path) if path else "config"
        for key, prop in self.declared.items():
            text = environ.get(prop.env_var)
            if text is None:
                continue
            try:
                self.values[key] = prop.parse_env(text)
            except ValueError as exc:
                raise ConfigError(f"{key} from environment variable {prop.env_var}: {exc}") from None
            self.sources[key] = prop.env_var
        known_env = {p.env_var for p in self.declared.values()}
        for var in environ:
            if var.startswith("ZSTACK_") and var not in known_env and var not in _NOT_PROPERTIES:
                close = difflib.get_close_matches(var, sorted(known_env), n=1, cutoff=0.6)
                if close:
                    raise ConfigError(f"unknown environment variable {var}; did you mean {close[0]}?")
        for key, value in (overrides or {}).items():
            prop = self.declared.get(key)
            if prop is None:
                raise ConfigError(f"unknown setting {key!r}{self._closest(key)}")
            try:
                self.values[key] = prop.check(value)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
            self.sources[key] = "argument"
        for key, prop in self.declared.items():
            if prop.required and self.values.get(key) is None:
                raise ConfigError(f"{key} is required ({prop.description or 'no default'}): set it in "
                                  f"[{prop.section}] of zstack.toml or with {prop.env_var}")

    def __getitem__(self, key: str) -> Any:
        try:
            return self.values[key]
        except KeyError:
            raise KeyError(f"no global property {key!r}{self._closest(key)}") from None

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


# Environment variables the kernel reads that are not properties.
_NOT_PROPERTIES = {
    "ZSTACK_DISABLE_PLUGINS",
    "ZSTACK_DISABLE_PLUGIN_AUTOLOAD",
    "ZSTACK_CONFIG",
    "ZSTACK_ADMIN_PASSWORD",
    # read by the `zstack` client commands (login, api, query), not by the node
    "ZSTACK_URL",
    "ZSTACK_PASSWORD",
    "ZSTACK_ACCOUNT",
}

CORE_PROPERTIES = [
    GlobalProperty(section="node", name="data_dir", default="~/.local/share/zstack",
                   description="where the node keeps its database and files"),
    GlobalProperty(section="node", name="libvirt_uri", default="test:///default",
                   description="libvirt URI of the default host for a one-machine cloud"),
    GlobalProperty(section="database", name="url", default="",
                   description="database URL (sqlite:///path, postgresql://..., mysql://...); "
                               "empty means an SQLite file under the data directory"),
    GlobalProperty(section="api", name="host", default="127.0.0.1", description="address the HTTP API binds"),
    GlobalProperty(section="api", name="port", type="int", default=8080, description="port of the HTTP API"),
    GlobalProperty(section="api", name="max_concurrent_requests", type="int", default=512,
                   description="API requests served at once; more are refused with SYS.1005 (HTTP 503, "
                               "Retry-After) instead of queueing without bound"),
    GlobalProperty(section="api", name="max_running_jobs", type="int", default=100,
                   description="long API jobs (CreateVmInstance, ...) running at once; later ones wait "
                               "their turn in submission order, their job Running with no progress yet"),
    GlobalProperty(section="bus", name="default_timeout", type="float", default=30.0,
                   description="seconds a bus call waits for a reply"),
    GlobalProperty(section="plugins", name="disabled", type="list", default=[],
                   description="plugins not to load, by entry-point name"),
    GlobalProperty(section="log", name="level", default="INFO", description="logging level"),
]
