"""A bytecode cache for the methods attrs generates for the classes of the zstack packages.

attrs writes the ``__init__``, ``__repr__`` and ``__eq__`` of each class as Python source and
compiles it when the class is created. ``zstack node start`` creates about 260 such classes
(API messages, replies, inventories), and those ``compile()`` calls were the largest single item
of its start-up (80 ms of 0.5 s). The code object depends only on the source text, the file name
attrs gives it (``<attrs generated methods zstack_kvm.api.APICreateVmInstanceMsg>``), the
compiler flags and the Python version, so it is cached the way Python caches a module's
bytecode: one marshal file beside ``zstack_core``'s ``.pyc`` files (named for the Python
version), entries keyed by file name *and* a digest of the source text. A class whose
generated source changed simply misses and is compiled as before; nothing else of attrs changes
(attrs still builds every class, its linecache entries, its globals). One detail: a hashable
class's ``__hash__`` source holds ``hash()`` of a string, which differs between processes
(``PYTHONHASHSEED``); it is keyed with that number left out and put back into the cached code.

The file is written at exit by a process that compiled something the file did not hold, under
the same rules as ``.pyc`` files: not with ``PYTHONDONTWRITEBYTECODE``/``-B``, under
``sys.pycache_prefix`` when set, silently not at all where the directory is not writable.
Only classes of modules named ``zstack_*`` are cached (not a test's or another program's).
``ZSTACK_ATTRS_CACHE=0`` in the environment turns the cache off.

This replaces a private function of attrs (``attr._make._compile_and_eval``); if it is not
there with the expected shape (another attrs version), nothing is installed.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import marshal
import os
import sys
from types import CodeType
from typing import Any

__all__ = ["install", "stats"]

_FILE_PREFIX = "<attrs generated "
_MODULE_PREFIX = "zstack_"
_MAX_ENTRIES = 4000
"""More entries than this (stale ones, after many edits of the classes): keep only this
process's."""

_cache: dict[tuple[str, bytes], tuple[CodeType, int | None]] = {}
"""(file name, digest of the source) -> (code, the type hash it was compiled with, if any)."""
_used: dict[tuple[str, bytes], tuple[CodeType, int | None]] = {}
stats = {"hits": 0, "compiled": 0, "loaded": 0}
"""What this process did: methods taken from the cache, compiled, entries read from the file."""
_path: str | None = None
_installed = False


def _cache_path() -> str:
    # cache_from_source follows sys.pycache_prefix and names the interpreter (cpython-311): the
    # marshal format and the compiler are the interpreter's. The attrs version needs no place
    # in the name: an entry is found only by the very source attrs generated.
    here = os.path.dirname(os.path.abspath(__file__))
    return importlib.util.cache_from_source(os.path.join(here, "_attrs_methods.py"))[: -len(".pyc")] + ".marshal"


def _ours(filename: str) -> bool:
    # "<attrs generated methods zstack_kvm.api.APIStartVmInstanceMsg>" (also "hash", "init"...)
    if not filename.startswith(_FILE_PREFIX):
        return False
    parts = filename.split(" ", 3)
    return len(parts) == 4 and parts[3].startswith(_MODULE_PREFIX)


def _load(path: str) -> None:
    try:
        with open(path, "rb") as f:
            data = marshal.loads(f.read())  # load(f) reads the file in many small pieces
    except (OSError, EOFError, ValueError, TypeError):
        return
    if not isinstance(data, list):
        return
    for entry in data:
        if isinstance(entry, tuple) and len(entry) == 4 and isinstance(entry[2], CodeType):
            _cache[(entry[0], entry[1])] = (entry[2], entry[3])
    stats["loaded"] = len(_cache)


def _write() -> None:
    if not stats["compiled"] or _path is None or sys.dont_write_bytecode:
        return
    entries = dict(_cache) if len(_cache) + len(_used) <= _MAX_ENTRIES else {}
    entries.update(_used)
    payload = marshal.dumps([(f, d, c, h) for (f, d), (c, h) in entries.items()])
    tmp = f"{_path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(_path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, _path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def install() -> None:
    """Route attrs' compilation of generated methods through the cache (once per process)."""
    global _installed, _path
    if _installed:
        return
    _installed = True
    if os.environ.get("ZSTACK_ATTRS_CACHE", "1") == "0":  # the opt-out, should attrs misbehave with it
        return
    try:
        import attr._make as make
    except ImportError:  # pragma: no cover - attrs is a dependency
        return
    original = getattr(make, "_compile_and_eval", None)
    code = getattr(original, "__code__", None)
    # The same signature, and the same compiler flags as this module's compile() (attrs' module
    # has ``from __future__ import annotations``, as this one): the cached code is then exactly
    # what attrs would have compiled.
    if (code is None or code.co_varnames[:4] != ("script", "globs", "locs", "filename")
            or (code.co_flags ^ _cached_compile_and_eval.__code__.co_flags) & _FUTURE_FLAGS):
        return
    try:
        _path = _cache_path()
    except (ImportError, NotImplementedError, ValueError):
        return
    _load(_path)

    make._compile_and_eval = _cached_compile_and_eval
    atexit.register(_write)


def _cached_compile_and_eval(script: str, globs: dict[str, Any] | None,
                             locs: Any = None, filename: str = "") -> None:
    # The signature and body of attr._make._compile_and_eval, with the compile cached.
    if _ours(filename):
        bytecode = _cached_compile(script, filename)
    else:
        bytecode = compile(script, filename, "exec")
    eval(bytecode, globs, locs)


def _cached_compile(script: str, filename: str) -> CodeType:
    # attrs' __hash__ hashes a tuple led by hash("<attrs generated hash MODULE.CLASS>"): the
    # same text in every process but not the same number (str hashes are salted per process).
    type_hash: int | None = hash(filename.replace(" methods ", " hash ", 1))
    text = str(type_hash)
    if text in script:
        normal = script.replace(text, "TYPE_HASH", 1)
    else:
        normal, type_hash = script, None
    key = (filename, hashlib.sha1(normal.encode(), usedforsecurity=False).digest())
    entry = _cache.get(key)
    if entry is None:
        entry = (compile(script, filename, "exec"), type_hash)
        stats["compiled"] += 1
    else:
        stats["hits"] += 1
        code, cached_hash = entry
        if cached_hash != type_hash and cached_hash is not None and type_hash is not None:
            code = _replace_int(code, cached_hash, type_hash)
        entry = (code, type_hash)
    _used[key] = entry
    return entry[0]


def _replace_int(code: CodeType, old: int, new: int) -> CodeType:
    consts = tuple(_replace_int(c, old, new) if isinstance(c, CodeType)
                   else new if type(c) is int and c == old else c for c in code.co_consts)
    return code.replace(co_consts=consts)


def _future_flags() -> int:
    import __future__

    return __future__.annotations.compiler_flag


_FUTURE_FLAGS = _future_flags()
