"""Network's part of ``zstack check``: addresses against NICs, NICs against VMs.

``network.ips``: every used IP belongs to a NIC that names it back, every NIC has its address
(a NIC without one is the half of an interrupted VM create), and every NIC belongs to a VM that
exists (compute's VMs, found through the generic query).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from zstack_core.check import CheckContext, ConsistencyCheck, Finding

from .models import UsedIpVO, VmNicVO

__all__ = ["CHECKS", "IpCheck"]


class IpCheck(ConsistencyCheck):
    name = "network.ips"
    description = "used IPs against VM NICs, NICs against VMs"

    async def run(self, ctx: CheckContext) -> Iterable[Finding]:
        def load() -> tuple[list[Any], list[Any]]:
            return list(UsedIpVO.select()), list(VmNicVO.select())

        used, nics = await ctx.db(load)
        nic_by_uuid = {n.uuid: n for n in nics}
        ip_by_uuid = {u.uuid: u for u in used}
        vm_uuids = sorted({n.vm_instance_uuid for n in nics})
        if "VmInstance" in ctx.node.query.resources and vm_uuids:
            vms = {vm.uuid for vm in await ctx.find("VmInstance", [("uuid", "in", vm_uuids)])}
        else:
            vms = set(vm_uuids)  # no compute here: nothing to compare NICs with

        def busy(vm_uuid: str | None) -> bool:
            return vm_uuid is not None and ctx.busy(f"vm-{vm_uuid}")

        out: list[Finding] = []
        for ip in used:
            nic = nic_by_uuid.get(ip.vm_nic_uuid) if ip.vm_nic_uuid else None
            if nic is None:
                out.append(self.finding("orphan-ip", "UsedIp", ip.uuid,
                                        f"{ip.ip} of L3 network {ip.l3_network_uuid} is held by "
                                        f"{'NIC ' + ip.vm_nic_uuid + ', which does not exist' if ip.vm_nic_uuid else 'no NIC'}"))
        for nic in nics:
            if busy(nic.vm_instance_uuid):
                continue
            if nic.vm_instance_uuid not in vms:
                out.append(self.finding("orphan-nic", "VmNic", nic.uuid,
                                        f"NIC {nic.mac} of VM {nic.vm_instance_uuid}, which does not exist"))
            if not nic.used_ip_uuid:
                out.append(self.finding("nic-without-ip", "VmNic", nic.uuid,
                                        f"NIC {nic.mac} of VM {nic.vm_instance_uuid} has no address on L3 network "
                                        f"{nic.l3_network_uuid}"))
                continue
            ip = ip_by_uuid.get(nic.used_ip_uuid)
            if ip is None or ip.vm_nic_uuid != nic.uuid or ip.ip != nic.ip:
                seen = "no such used IP" if ip is None else f"used IP {ip.ip} held by NIC {ip.vm_nic_uuid}"
                out.append(self.finding("ip-mismatch", "VmNic", nic.uuid,
                                        f"NIC says {nic.ip} (used IP {nic.used_ip_uuid}); the database has {seen}"))
        return out


CHECKS: list[ConsistencyCheck] = [IpCheck()]
