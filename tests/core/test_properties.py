"""Global properties: ``zstack.toml`` read with tomli, ``ZSTACK_<SECTION>_<NAME>`` overrides, and
errors that name the key, the file, the line and the closest known key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from zstack_core import ConfigError, GlobalProperty, ManagementNode, NodeStartError, hookimpl
from zstack_core.properties import CORE_PROPERTIES, Properties, load_toml

EXTRA = [
    GlobalProperty(section="kvm", name="reserved_memory", default="512M", description="memory kept for the host"),
    GlobalProperty(section="kvm", name="migration_quantity", type="int", default=2),
    GlobalProperty(section="kvm", name="vnc_enabled", type="bool", default=True),
    GlobalProperty(section="kvm", name="cpu_ratio", type="float", default=1.0),
    GlobalProperty(section="kvm", name="modules", type="list", default=[]),
]


def props() -> Properties:
    return Properties([*CORE_PROPERTIES, *EXTRA])


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "zstack.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    p = props()
    p.load({}, environ={})
    assert p["api.port"] == 8080 and p["api.host"] == "127.0.0.1"
    assert p["kvm.migration_quantity"] == 2 and p.sources["kvm.migration_quantity"] == "default"


def test_values_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
# comments are fine
[api]
port = 9090

[kvm]
reserved_memory = "1G"
vnc_enabled = false
cpu_ratio = 4          # an int where a float is declared is fine
modules = ["a", "b"]

[bus]
default_timeout = 2.5
""")
    p = props()
    p.load(load_toml(path), path, environ={})
    assert p["api.port"] == 9090 and p["kvm.reserved_memory"] == "1G" and p["kvm.vnc_enabled"] is False
    assert p["kvm.cpu_ratio"] == 4.0 and isinstance(p["kvm.cpu_ratio"], float)
    assert p["kvm.modules"] == ["a", "b"] and p["bus.default_timeout"] == 2.5
    assert p.sources["api.port"] == str(path) and p.sources["api.host"] == "default"


def test_dotted_keys_work_too(tmp_path: Path) -> None:
    path = write(tmp_path, 'api.port = 7000\nkvm.reserved_memory = "2G"\n')
    p = props()
    p.load(load_toml(path), path, environ={})
    assert p["api.port"] == 7000 and p["kvm.reserved_memory"] == "2G"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[api]\nport = 9090\n[kvm]\nmigration_quantity = 3\n")
    p = props()
    env = {"ZSTACK_API_PORT": "9191", "ZSTACK_KVM_VNC_ENABLED": "no", "ZSTACK_KVM_MODULES": "x, y",
           "ZSTACK_KVM_CPU_RATIO": "2.5", "ZSTACK_NODE_DATA_DIR": "/srv/zs", "ZSTACK_DISABLE_PLUGINS": "kvm"}
    p.load(load_toml(path), path, environ=env)
    assert p["api.port"] == 9191 and p.sources["api.port"] == "ZSTACK_API_PORT"
    assert p["kvm.migration_quantity"] == 3  # from the file, no variable for it
    assert p["kvm.vnc_enabled"] is False and p["kvm.modules"] == ["x", "y"] and p["kvm.cpu_ratio"] == 2.5
    assert p["node.data_dir"] == "/srv/zs"


def test_arguments_override_the_environment() -> None:
    p = props()
    p.load({"api": {"port": 1}}, environ={"ZSTACK_API_PORT": "2"}, overrides={"api.port": 3})
    assert p["api.port"] == 3 and p.sources["api.port"] == "argument"


def test_unknown_key_names_key_file_line_and_closest(tmp_path: Path) -> None:
    path = write(tmp_path, """\
[node]
libvirt_uri = "test:///default"

[api]
host = "0.0.0.0"
prot = 8081
""")
    with pytest.raises(ConfigError) as info:
        props().load(load_toml(path), path, environ={})
    text = str(info.value)
    assert "unknown key 'api.prot'" in text
    assert f"in {path}, line 6" in text
    assert "did you mean 'api.port'?" in text


def test_unknown_dotted_key_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'api.port = 1\nkvm.reserved_memroy = "1G"\n')
    with pytest.raises(ConfigError) as info:
        props().load(load_toml(path), path, environ={})
    text = str(info.value)
    assert "'kvm.reserved_memroy'" in text and "line 2" in text and "'kvm.reserved_memory'" in text


def test_unknown_key_far_from_anything_lists_known_keys() -> None:
    with pytest.raises(ConfigError) as info:
        props().load({"api": {"zzzzzzzz": 1}}, environ={})
    assert "known keys:" in str(info.value) and "api.port" in str(info.value)


@pytest.mark.parametrize(("text", "key", "words"), [
    ('[api]\nport = "8080"\n', "api.port", "expected int, got str '8080'"),
    ("[api]\nport = true\n", "api.port", "expected int, got bool"),
    ("[api]\nport = 80.5\n", "api.port", "expected int"),
    ("[kvm]\nvnc_enabled = 1\n", "kvm.vnc_enabled", "expected bool"),
    ('[kvm]\nmodules = "a,b"\n', "kvm.modules", "expected list"),
    ('[kvm]\nmodules = ["a", 1]\n', "kvm.modules", "list of strings"),
    ("[kvm]\nreserved_memory = 512\n", "kvm.reserved_memory", "expected str"),
])
def test_wrong_type_names_key_file_and_line(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        props().load(load_toml(path), path, environ={})
    message = str(info.value)
    assert message.startswith(f"{key} in {path}, line 2: ") and words in message


@pytest.mark.parametrize(("var", "value"), [("ZSTACK_API_PORT", "eighty"), ("ZSTACK_KVM_VNC_ENABLED", "maybe"),
                                             ("ZSTACK_KVM_CPU_RATIO", "fast")])
def test_wrong_type_in_the_environment(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"from environment variable {var}"):
        props().load({}, environ={var: value})


def test_misspelled_environment_variable() -> None:
    with pytest.raises(ConfigError, match="unknown environment variable ZSTACK_API_PROT; did you mean ZSTACK_API_PORT"):
        props().load({}, environ={"ZSTACK_API_PROT": "1"})
    props().load({}, environ={"ZSTACK_SOMETHING_UNRELATED_ENTIRELY": "1"})  # not close to any: ignored


def test_unknown_section_names_file_line_and_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "[api]\nport = 1\n\n[nod]\ndata_dir = '/x'\n")
    with pytest.raises(ConfigError) as info:
        props().load(load_toml(path), path, environ={})
    text = str(info.value)
    assert "unknown section [nod]" in text and f"{path}, line 4" in text and "did you mean [node]?" in text


def test_top_level_key_outside_a_section(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 8080\n")
    with pytest.raises(ConfigError) as info:
        props().load(load_toml(path), path, environ={})
    assert "'port'" in str(info.value) and "sections" in str(info.value)


def test_missing_required_property() -> None:
    p = Properties([*CORE_PROPERTIES,
                    GlobalProperty(section="ceph", name="monitor_url", required=True, description="a Ceph monitor")])
    with pytest.raises(ConfigError) as info:
        p.load({}, environ={})
    text = str(info.value)
    assert "ceph.monitor_url is required" in text and "a Ceph monitor" in text
    assert "[ceph]" in text and "ZSTACK_CEPH_MONITOR_URL" in text
    p.load({}, environ={"ZSTACK_CEPH_MONITOR_URL": "mon1:6789"})
    assert p["ceph.monitor_url"] == "mon1:6789"


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[api\nport = \n")
    with pytest.raises(ConfigError, match=str(path)):
        load_toml(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_toml(tmp_path / "missing.toml")


def test_declaring_a_key_twice_is_an_error() -> None:
    with pytest.raises(ConfigError, match="api.port is declared twice"):
        Properties([*CORE_PROPERTIES, GlobalProperty(section="api", name="port", type="int")])


def test_unknown_property_lookup_suggests() -> None:
    p = props()
    p.load({}, environ={})
    with pytest.raises(KeyError, match="api.port"):
        p["api.prot"]
    assert p.get("api.prot", "fallback") == "fallback"


def test_bad_property_type_declaration() -> None:
    with pytest.raises(ValueError, match="type must be one of"):
        GlobalProperty(section="x", name="y", type="dict")


def test_env_var_name() -> None:
    assert GlobalProperty(section="kvm", name="reserved-memory").env_var == "ZSTACK_KVM_RESERVED_MEMORY"


# -- through the node -----------------------------------------------------------------------------


class CephPlugin:
    @hookimpl
    def zstack_global_properties(self) -> Sequence[GlobalProperty]:
        return [GlobalProperty(section="ceph", name="pool", default="zstack"),
                GlobalProperty(section="ceph", name="replicas", type="int", default=3)]


def test_node_reads_zstack_toml_from_its_data_dir(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (data_dir / "zstack.toml").write_text('[api]\nport = 0\n[ceph]\npool = "vms"\n[bus]\ndefault_timeout = 4\n')
    monkeypatch.setenv("ZSTACK_CEPH_REPLICAS", "2")
    node = ManagementNode(plugins=[CephPlugin()], load_entry_points=False, data_dir=data_dir)
    node.inspect()
    assert node.properties["api.port"] == 0
    assert node.properties["ceph.pool"] == "vms" and node.properties["ceph.replicas"] == 2
    assert node.properties["node.data_dir"] == str(data_dir)
    assert node.bus.default_timeout == 4.0  # the kernel uses what it reads


def test_node_config_path_from_environment(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "custom.toml"
    config.write_text("[api]\nport = 1234\n")
    monkeypatch.setenv("ZSTACK_CONFIG", str(config))
    node = ManagementNode(load_entry_points=False, data_dir=data_dir)
    node.inspect()
    assert node.properties["api.port"] == 1234


async def test_node_refuses_an_unknown_key(data_dir: Path) -> None:
    path = data_dir / "zstack.toml"
    path.write_text('[ceph]\npool = "vms"\nreplica = 2\n')
    node = ManagementNode(plugins=[CephPlugin()], load_entry_points=False, data_dir=data_dir)
    with pytest.raises(NodeStartError) as info:
        await node.start()
    text = str(info.value)
    assert "'ceph.replica'" in text and f"{path}, line 3" in text and "did you mean 'ceph.replicas'?" in text
    assert node.state == "Failed"


async def test_plugin_keys_are_unknown_when_the_plugin_is_not_loaded(data_dir: Path) -> None:
    (data_dir / "zstack.toml").write_text('[ceph]\npool = "vms"\n')
    with pytest.raises(NodeStartError, match=r"unknown section \[ceph\]"):
        await ManagementNode(load_entry_points=False, data_dir=data_dir).start()


def test_node_settings_argument(data_dir: Path) -> None:
    node = ManagementNode(load_entry_points=False, data_dir=data_dir, settings={"api.port": 5555})
    node.inspect()
    assert node.properties["api.port"] == 5555
    bad = ManagementNode(load_entry_points=False, data_dir=data_dir, settings={"api.prot": 1})
    with pytest.raises(NodeStartError, match="did you mean 'api.port'"):
        bad.inspect()
