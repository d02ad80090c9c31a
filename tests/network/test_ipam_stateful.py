"""IPAM as a state machine: any interleaving of add-range, delete-range, allocate (any or a
requested address) and release, on two L3 networks that share one L2 network (so their ranges
must not overlap either), keeps every address unique and inside a range of its own L3 network.

The model predicts each outcome (refused or not, and why); the invariant compares the database
with the model after every step. It runs against a real node and a real SQLite database.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule, run_state_machine_as_test

import zstack_network.plugin
from zstack_core import SyncManagementNode, ZStackError
from zstack_core.header.messages import AllocateVmNicMsg, ReleaseVmNicMsg
from zstack_network.models import IpRangeVO, UsedIpVO, VmNicVO

from .conftest import ZONE

SUBNET = "10.20.0."  # /27: .0 network, .1 gateway, .31 broadcast; ranges live in .2-.30
_interfaces = itertools.count()


@pytest.fixture(scope="module")
def sync_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncManagementNode]:
    data = tmp_path_factory.mktemp("ipam-stateful")
    with SyncManagementNode(plugins=[zstack_network.plugin], load_entry_points=False, data_dir=data,
                            config={}) as node:
        yield node


class IpamMachine(RuleBasedStateMachine):
    node: SyncManagementNode

    ranges = Bundle("ranges")
    nics = Bundle("nics")

    def __init__(self) -> None:
        super().__init__()
        iface = f"st{next(_interfaces)}"
        api = self.node.api_call
        l2 = api("CreateL2NoVlanNetwork", name="l2", zoneUuid=ZONE, physicalInterface=iface).inventory
        self.l3s = [api("CreateL3Network", name=f"l3-{i}", l2NetworkUuid=l2.uuid,
                        ipAllocationStrategy=strategy).inventory.uuid
                    for i, strategy in enumerate(("FirstAvailable", "Random"))]
        self.model_ranges: dict[str, tuple[int, int, int]] = {}  # uuid -> (l3 index, start, end)
        self.model_used: dict[str, tuple[int, int]] = {}         # nic uuid -> (l3 index, last octet)

    # -- helpers ------------------------------------------------------------------------------

    def _in_range(self, l3: int, octet: int) -> str | None:
        for uuid, (i, s, e) in self.model_ranges.items():
            if i == l3 and s <= octet <= e:
                return uuid
        return None

    def _used(self, l3: int) -> set[int]:
        return {o for i, o in self.model_used.values() if i == l3}

    def _free(self, l3: int) -> set[int]:
        inside = {o for i, s, e in self.model_ranges.values() if i == l3 for o in range(s, e + 1)}
        return inside - self._used(l3)

    def _allocate(self, l3: int, ip: str | None) -> Any:
        msg = AllocateVmNicMsg(vm_instance_uuid="a" * 32, l3_network_uuid=self.l3s[l3], ip=ip)
        return self.node.run(self.node.node.bus.call(msg))  # type: ignore[union-attr]

    # -- rules --------------------------------------------------------------------------------

    @rule(target=ranges, l3=st.integers(0, 1), a=st.integers(2, 30), b=st.integers(2, 30))
    def add_range(self, l3: int, a: int, b: int) -> Any:
        start, end = min(a, b), max(a, b)
        overlaps = any(s <= end and start <= e for _, s, e in self.model_ranges.values())
        try:
            inv = self.node.api_call("AddIpRange", l3NetworkUuid=self.l3s[l3], startIp=f"{SUBNET}{start}",
                                     endIp=f"{SUBNET}{end}", netmask="255.255.255.224", gateway=f"{SUBNET}1").inventory
        except ZStackError as exc:
            assert overlaps and exc.code == "L3.1001", exc.error
            return None
        assert not overlaps
        self.model_ranges[inv.uuid] = (l3, start, end)
        return inv.uuid

    @rule(uuid=consumes(ranges))
    def delete_range(self, uuid: str | None) -> None:
        if uuid is None:
            return
        l3, s, e = self.model_ranges[uuid]
        in_use = any(i == l3 and s <= o <= e for i, o in self.model_used.values())
        try:
            self.node.api_call("DeleteIpRange", uuid=uuid)
        except ZStackError as exc:
            assert in_use and exc.code == "L3.1006", exc.error
            return
        assert not in_use
        del self.model_ranges[uuid]

    @rule(target=nics, l3=st.integers(0, 1), requested=st.one_of(st.none(), st.integers(0, 31)))
    def allocate(self, l3: int, requested: int | None) -> Any:
        reply = self._allocate(l3, None if requested is None else f"{SUBNET}{requested}")
        if requested is None:
            expect_ok = bool(self._free(l3))
        else:
            expect_ok = requested != 1 and self._in_range(l3, requested) is not None and requested not in self._used(l3)
        if reply.error is not None:
            assert not expect_ok, reply.error
            assert reply.error.code in ("L3.1002", "L3.1003", "L3.1004"), reply.error
            return None
        assert expect_ok
        octet = int(reply.nic.ip.rsplit(".", 1)[1])
        assert reply.nic.ip.startswith(SUBNET) and self._in_range(l3, octet) and octet not in self._used(l3)
        if requested is not None:
            assert octet == requested
        self.model_used[reply.nic.uuid] = (l3, octet)
        return reply.nic.uuid

    @rule(uuid=consumes(nics))
    def release(self, uuid: str | None) -> None:
        if uuid is None:
            return
        reply = self.node.run(self.node.node.bus.call(ReleaseVmNicMsg(nic_uuid=uuid)))  # type: ignore[union-attr]
        assert reply.error is None
        del self.model_used[uuid]

    # -- the invariant ------------------------------------------------------------------------

    @invariant()
    def database_matches_model(self) -> None:
        def read() -> tuple[list[Any], list[Any], list[Any]]:
            used = list(UsedIpVO.select(UsedIpVO.l3_network_uuid, UsedIpVO.ip, UsedIpVO.ip_range_uuid,
                                        UsedIpVO.vm_nic_uuid).where(UsedIpVO.l3_network_uuid.in_(self.l3s)).tuples())
            ranges = list(IpRangeVO.select(IpRangeVO.uuid, IpRangeVO.l3_network_uuid, IpRangeVO.start_ip,
                                           IpRangeVO.end_ip).where(IpRangeVO.l3_network_uuid.in_(self.l3s)).tuples())
            nics = list(VmNicVO.select(VmNicVO.uuid, VmNicVO.ip).where(VmNicVO.l3_network_uuid.in_(self.l3s)).tuples())
            return used, ranges, nics

        node = self.node.node
        assert node is not None
        used, ranges, nics = self.node.run(node.db.run(read))
        assert {u: (self.l3s[i], f"{SUBNET}{s}", f"{SUBNET}{e}") for u, (i, s, e) in self.model_ranges.items()} == \
            {u: (l3, s, e) for u, l3, s, e in ranges}
        assert len({(l3, ip) for l3, ip, _, _ in used}) == len(used)  # unique
        assert {n: (self.l3s[i], f"{SUBNET}{o}") for n, (i, o) in self.model_used.items()} == \
            {nic: (l3, ip) for l3, ip, _, nic in used}
        for l3, ip, range_uuid, _ in used:  # inside its range, of its own L3 network
            _, r_l3, s, e = next(r for r in ranges if r[0] == range_uuid)
            assert r_l3 == l3 and int(s.rsplit(".", 1)[1]) <= int(ip.rsplit(".", 1)[1]) <= int(e.rsplit(".", 1)[1])
        assert {n: ip for n, ip in nics} == {nic: ip for _, ip, _, nic in used}


def test_any_interleaving_keeps_addresses_unique_and_in_range(sync_node: SyncManagementNode) -> None:
    IpamMachine.node = sync_node
    run_state_machine_as_test(IpamMachine, settings=settings(
        max_examples=25, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
