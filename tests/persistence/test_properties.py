"""Global properties: start-up settings declared by plugins, read from ``zstack.toml`` and
overridden by ``ZSTACK_<SECTION>_<NAME>`` environment variables; mistakes stop start-up with an
error naming the key, the file and line, and the closest known key."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import psycopg2
import pymysql
import pytest

from zstack_core import GlobalProperty, ManagementNode, NodeStartError

from .conftest import every_backend
from .plugins import LabPlugin

OVEN_URL = GlobalProperty(section="lab", name="oven_url", required=True, description="where the oven listens")
LAB_PROPERTIES = [
    OVEN_URL,
    GlobalProperty(section="lab", name="batch", type="int", default=4),
    GlobalProperty(section="lab", name="flavours", type="list", default=["plain"]),
    GlobalProperty(section="lab", name="strict", type="bool", default=False),
    GlobalProperty(section="lab", name="ratio", type="float", default=0.5),
]


def write_config(directory: Path, text: str) -> Path:
    path = directory / "zstack.toml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def lab_node(config: Path, data_dir: Path) -> ManagementNode:
    return ManagementNode(config=config, data_dir=data_dir, load_entry_points=False,
                          plugins=[LabPlugin(properties=LAB_PROPERTIES)])


async def start_error(node: ManagementNode) -> str:
    with pytest.raises(NodeStartError) as stopped:
        await node.start()
    assert node.state == "Failed"
    return str(stopped.value)


async def test_file_values_environment_overrides_and_types(tmp_path: Path, data_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, """
        [lab]
        oven_url = "http://127.0.0.1:9/oven"
        batch = 8
        ratio = 2
        flavours = ["lemon", "plum"]

        [bus]
        default_timeout = 12.5
    """)
    monkeypatch.setenv("ZSTACK_LAB_BATCH", "16")
    monkeypatch.setenv("ZSTACK_LAB_STRICT", "yes")
    monkeypatch.setenv("ZSTACK_LAB_FLAVOURS", "cherry, apple")
    async with lab_node(config, data_dir) as node:
        props = node.properties
        assert props["lab.oven_url"] == "http://127.0.0.1:9/oven" and props.sources["lab.oven_url"] == str(config)
        assert props["lab.batch"] == 16 and props.sources["lab.batch"] == "ZSTACK_LAB_BATCH"  # env wins
        assert props["lab.strict"] is True
        assert props["lab.flavours"] == ["cherry", "apple"]
        assert props["lab.ratio"] == 2.0 and isinstance(props["lab.ratio"], float)
        assert props["bus.default_timeout"] == 12.5 and node.bus.default_timeout == 12.5
        assert props["api.port"] == 8080 and props.sources["api.port"] == "default"


@every_backend
async def test_database_url_from_zstack_toml(tmp_path: Path, data_dir: Path, db_url: str) -> None:
    config = write_config(tmp_path, f"""
        [database]
        url = "{db_url}"
    """)
    async with ManagementNode(config=config, data_dir=data_dir, load_entry_points=False) as node:
        assert node.db.url == db_url and node.properties.sources["database.url"] == str(config)
        assert not (data_dir / "zstack.db").exists()  # not the default SQLite file
    if db_url.startswith("sqlite"):
        assert Path(db_url.removeprefix("sqlite:///")).exists()
        return
    # The kernel's schema is in the server database the file named.
    if db_url.startswith("postgresql"):
        conn = psycopg2.connect(db_url)
    else:
        host, port_db = db_url.removeprefix("mysql://root@").split(":")
        port, database = port_db.split("/")
        conn = pymysql.connect(host=host, port=int(port), user="root", database=database)
    try:
        cur = conn.cursor()
        cur.execute("SELECT plugin, version FROM schema_version WHERE plugin = 'zstack_core'")
        assert [tuple(r) for r in cur.fetchall()] == [("zstack_core", 1)]
    finally:
        conn.close()


async def test_default_database_is_sqlite_in_the_data_directory(data_dir: Path) -> None:
    async with ManagementNode(data_dir=data_dir, load_entry_points=False) as node:
        assert node.db.is_sqlite and node.db.url == f"sqlite:///{(data_dir / 'zstack.db').resolve()}"
        mode = await node.db.run(lambda: node.db.db.execute_sql("PRAGMA journal_mode").fetchone()[0])
        assert mode == "wal"


async def test_environment_overrides_the_database_url(tmp_path: Path, data_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, f"""
        [database]
        url = "sqlite:///{tmp_path / 'from-file.db'}"
    """)
    monkeypatch.setenv("ZSTACK_DATABASE_URL", f"sqlite:///{tmp_path / 'from-env.db'}")
    async with ManagementNode(config=config, data_dir=data_dir, load_entry_points=False) as node:
        assert node.db.url.endswith("from-env.db")
    assert (tmp_path / "from-env.db").exists() and not (tmp_path / "from-file.db").exists()


async def test_unknown_key_names_key_file_line_and_closest_key(tmp_path: Path, data_dir: Path) -> None:
    config = write_config(tmp_path, """
        [lab]
        oven_url = "http://127.0.0.1:9/oven"

        [database]
        # the URL of the shared database
        ulr = "sqlite:///x.db"
    """)
    message = await start_error(lab_node(config, data_dir))
    assert message == f"unknown key 'database.ulr' in {config}, line 6; did you mean 'database.url'?"


async def test_unknown_key_of_a_plugin_section(tmp_path: Path, data_dir: Path) -> None:
    config = write_config(tmp_path, """
        [lab]
        oven_url = "http://127.0.0.1:9/oven"
        batches = 3
    """)
    message = await start_error(lab_node(config, data_dir))
    assert message == f"unknown key 'lab.batches' in {config}, line 3; did you mean 'lab.batch'?"


async def test_unknown_section(tmp_path: Path, data_dir: Path) -> None:
    config = write_config(tmp_path, """
        [lab]
        oven_url = "http://127.0.0.1:9/oven"
        [databse]
        url = "sqlite:///x.db"
    """)
    message = await start_error(lab_node(config, data_dir))
    assert message == f"unknown section [databse] in {config}, line 3; did you mean [database]?"


async def test_wrong_type_in_the_file(tmp_path: Path, data_dir: Path) -> None:
    config = write_config(tmp_path, """
        [lab]
        oven_url = "http://127.0.0.1:9/oven"
        batch = "eight"
    """)
    message = await start_error(lab_node(config, data_dir))
    assert message == f"lab.batch in {config}, line 3: expected int, got str 'eight'"


async def test_wrong_type_in_the_environment(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, """
        [lab]
        oven_url = "http://127.0.0.1:9/oven"
    """)
    monkeypatch.setenv("ZSTACK_LAB_STRICT", "sometimes")
    message = await start_error(lab_node(config, data_dir))
    assert message == "lab.strict from environment variable ZSTACK_LAB_STRICT: expected true/false, got 'sometimes'"


async def test_misspelt_environment_variable(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, """
        [lab]
        oven_url = "http://127.0.0.1:9/oven"
    """)
    monkeypatch.setenv("ZSTACK_LAB_OVEN_ULR", "http://127.0.0.1:9/")
    message = await start_error(lab_node(config, data_dir))
    assert message == "unknown environment variable ZSTACK_LAB_OVEN_ULR; did you mean ZSTACK_LAB_OVEN_URL?"


async def test_missing_required_property(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, """
        [lab]
        batch = 2
    """)
    message = await start_error(lab_node(config, data_dir))
    assert message == ("lab.oven_url is required (where the oven listens): set it in [lab] of zstack.toml "
                       "or with ZSTACK_LAB_OVEN_URL")
    monkeypatch.setenv("ZSTACK_LAB_OVEN_URL", "http://127.0.0.1:9/oven")  # the fix the message names
    async with lab_node(config, data_dir) as node:
        assert node.properties["lab.oven_url"] == "http://127.0.0.1:9/oven"


async def test_toml_syntax_error_names_file_and_line(tmp_path: Path, data_dir: Path) -> None:
    config = write_config(tmp_path, """
        [lab]
        oven_url = "http://127.0.0.1:9/oven
    """)
    message = await start_error(lab_node(config, data_dir))
    assert message.startswith(f"{config}: ") and "line 2" in message


async def test_top_level_dotted_keys_are_found_on_their_line(tmp_path: Path, data_dir: Path) -> None:
    config = write_config(tmp_path, """
        lab.oven_url = "http://127.0.0.1:9/oven"
        api.prot = 8081
    """)
    message = await start_error(lab_node(config, data_dir))
    assert message == f"unknown key 'api.prot' in {config}, line 2; did you mean 'api.port'?"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
async def test_unreachable_database_stops_start_up_without_leaking_the_password(data_dir: Path, scheme: str) -> None:
    url = f"{scheme}://zstack:s3cret@127.0.0.1:{closed_port()}/zstack"
    message = await start_error(ManagementNode(data_dir=data_dir, load_entry_points=False,
                                               settings={"database.url": url}))
    assert message.startswith(f"cannot open the database {scheme}://zstack:***@127.0.0.1:")
    assert "s3cret" not in message
    assert "database unavailable" in message and ("refused" in message or "Can't connect" in message)


@pytest.mark.parametrize(("url", "scheme"), [("oracle://db/zstack", "oracle"), ("/var/lib/zstack.db", "")])
async def test_unknown_database_scheme(data_dir: Path, url: str, scheme: str) -> None:
    message = await start_error(ManagementNode(data_dir=data_dir, load_entry_points=False,
                                               settings={"database.url": url}))
    assert f"database.url has an unsupported scheme {scheme!r}: use sqlite:///PATH, postgresql://" in message
