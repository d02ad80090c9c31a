"""The ``zstack`` command.

``zstack node start`` runs a management node in the foreground until SIGINT/SIGTERM;
``zstack plugins [--json]`` lists every installed plugin and what it registers;
``zstack login``, ``logout``, ``api`` and ``query`` drive a running node over HTTP
(:mod:`zstack_core.cli_client`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .node import ManagementNode, NodeStartError

__all__ = ["main"]


def _node_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if getattr(args, "host", None):
        settings["api.host"] = args.host
    if getattr(args, "port", None) is not None:
        settings["api.port"] = args.port
    if getattr(args, "libvirt_uri", None):
        settings["node.libvirt_uri"] = args.libvirt_uri
    kwargs: dict[str, Any] = {"settings": settings}
    data_dir = getattr(args, "node_data_dir", None) or args.data_dir
    if data_dir:
        kwargs["data_dir"] = data_dir
    if args.config:
        kwargs["config"] = args.config
    return kwargs


def plugin_report(node: ManagementNode, include_builtin: bool = False) -> list[dict[str, Any]]:
    """What each plugin registered, for ``zstack plugins``."""
    out = []
    for info in node.plugins.infos.values():
        if info.builtin and not include_builtin:
            continue
        name = info.name
        entry: dict[str, Any] = {
            "name": name,
            "distribution": info.distribution,
            "version": info.version,
            "module": info.module,
            "disabled": info.disabled,
            "hooks": info.hooks,
            "services": sorted(sid for sid, owner in node.service_owner.items() if owner == name),
            "apis": sorted(api for api in node.api.registrations if node.api.owner(api) == name),
            "error_code_prefixes": sorted(p for p, (owner, _) in node.error_spaces.items() if owner == name),
            "global_configs": sorted(f"{c}/{n}" for (c, n), owner in node.configs.owner.items() if owner == name),
            "system_tags": sorted(key.split(":", 1)[1] for key, owner in node.tags.owner.items() if owner == name),
            "queryable_resources": sorted(r for r in node.query.resources
                                          if node.api.owner(f"Query{r}") == name),
        }
        extra = getattr(node, "plugin_report_extra", None)
        if extra is not None:
            entry.update(extra(name))
        if info.error:
            entry["error"] = info.error
        out.append(entry)
    return out


def cmd_plugins(args: argparse.Namespace) -> int:
    node = ManagementNode(**_node_kwargs(args))
    try:
        node.inspect()
    except NodeStartError as exc:
        print(f"zstack: {exc}", file=sys.stderr)
        return 2
    report = plugin_report(node, include_builtin=args.all)
    if args.json:
        try:
            print(json.dumps(report, indent=2))
        except BrokenPipeError:  # `zstack plugins --json | head`
            sys.stderr.close()
        return 0
    if not report:
        print("no plugins installed")
    for p in report:
        state = " (disabled)" if p["disabled"] else ""
        print(f"{p['name']}{state}: {p['distribution'] or '-'} {p['version'] or ''}  [{p['module']}]")
        for key in ("hooks", "services", "apis", "error_code_prefixes", "global_configs", "system_tags"):
            if p.get(key):
                print(f"    {key.replace('_', ' ')}: {', '.join(p[key])}")
    return 0


async def _serve(node: ManagementNode) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    try:
        server = await node.start_http()
    except OSError as exc:
        await node.stop()
        raise NodeStartError(str(exc)) from exc
    server_task = asyncio.create_task(node.serve_http())
    print(f"zstack: management node ready ({len(node.services)} services, {len(node.api.registrations)} APIs, "
          f"data in {node.data_dir}); HTTP API at {server.url}", flush=True)
    # Resumed (paused by cmd_node_start) with what start-up made in the oldest generation, so
    # the first collection does not scan it all while the first requests come in.
    gc.freeze()
    gc.unfreeze()
    gc.enable()
    try:
        await stop.wait()
    finally:
        print("zstack: stopping", flush=True)
        server_task.cancel()
        await asyncio.gather(server_task, return_exceptions=True)
        await node.stop()


def cmd_node_start(args: argparse.Namespace) -> int:
    node = ManagementNode(**_node_kwargs(args))
    # The cyclic garbage collector is paused until the node is ready (``_serve``): start-up
    # imports the plugins and builds their classes, tables and routes, objects that live as
    # long as the node, and collecting while they are made only scans them again and again
    # (about 10% of the time to ready). ``zstack_core`` does the same while it is imported.
    gc.disable()
    try:
        asyncio.run(_serve(node))
    except NodeStartError as exc:
        print(f"zstack: {exc}", file=sys.stderr)
        return 2
    finally:
        gc.enable()
    return 0


def cmd_plugin_new(args: argparse.Namespace) -> int:
    from .scaffold import ScaffoldError, new_plugin

    try:
        root = new_plugin(args.name, args.directory)
    except ScaffoldError as exc:
        print(f"zstack: {exc}", file=sys.stderr)
        return 2
    print(f"zstack: wrote {root}; next: pip install -e '{root}[test]' && pytest {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zstack", description="ZStack-style private cloud management node")
    parser.add_argument("--config", help="path of zstack.toml (default: $ZSTACK_CONFIG or <data-dir>/zstack.toml)")
    parser.add_argument("--data-dir", help="the node's data directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    node = sub.add_parser("node", help="run a management node").add_subparsers(dest="node_command", required=True)
    start = node.add_parser("start", help="run a node in the foreground until SIGINT/SIGTERM")
    start.add_argument("--host", help="address the HTTP API binds (default 127.0.0.1)")
    start.add_argument("--port", type=int, help="port of the HTTP API")
    start.add_argument("--libvirt-uri", help="libvirt URI of the default host")
    start.add_argument("--data-dir", dest="node_data_dir", help="the node's data directory (same as zstack --data-dir)")
    start.set_defaults(func=cmd_node_start)

    plugins = sub.add_parser("plugins", help="list installed plugins and what they register")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.add_argument("--all", action="store_true", help="include the kernel's own plugin (zstack_core)")
    plugins.set_defaults(func=cmd_plugins)

    plugin = sub.add_parser("plugin", help="write plugins").add_subparsers(dest="plugin_command", required=True)
    new = plugin.add_parser("new", help="write a new plugin distribution zstack-<name>/ whose tests pass as written")
    new.add_argument("name", help="short name: the entry point, service id and config category (e.g. quota)")
    new.add_argument("--directory", default=".", help="where to create zstack-<name>/ (default: here)")
    new.set_defaults(func=cmd_plugin_new)

    from .cli_client import add_client_commands

    add_client_commands(sub)
    from .check import add_check_command

    add_check_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
