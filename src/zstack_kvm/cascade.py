"""Cascading deletes: zone -> clusters -> hosts -> VMs, through ``zstack_cascade``.

Deleting a resource asks every plugin about its children: first ``check`` (anyone may refuse,
unless the user forces the delete), then ``delete`` or ``force``. Compute answers for its own
children in :func:`delete_children` (called from the ``zstack_cascade`` hookimpl); other plugins
answer for theirs (storage detaches primary storage from a deleted cluster...).

What compute does to its children:

* a **Zone** deletes its clusters (each a cascade of its own);
* a **Cluster** destroys and expunges the VMs placed in it, then deletes its hosts;
* a **Host** stops the VMs running on it (they keep their volumes and may start elsewhere) and
  forgets it as their last host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zstack_core.header import CascadeAction

from .models import ClusterVO, HostVO, VmInstanceVO

if TYPE_CHECKING:
    from .service import ComputeService

__all__ = ["delete_children", "run_cascade"]


async def run_cascade(service: ComputeService, parent_type: str, uuid: str, mode: str) -> None:
    """Check (unless forced), then delete the children of ``parent_type`` ``uuid`` in every plugin."""
    hooks = service.node.hooks
    if mode != "force":
        await hooks.cascade(CascadeAction(parent_type=parent_type, parent_uuids=[uuid], mode="check"))
    await hooks.cascade(CascadeAction(parent_type=parent_type, parent_uuids=[uuid], mode=mode))


async def delete_children(service: ComputeService, action: CascadeAction) -> None:
    """Compute's part of a cascade (see the module docstring)."""
    db = service.node.db
    uuids = list(action.parent_uuids)
    if action.parent_type == "Zone":
        clusters = await db.run(lambda: [c.uuid for c in ClusterVO.select(ClusterVO.uuid)
                                         .where(ClusterVO.zone_uuid.in_(uuids))])
        for cluster_uuid in clusters:
            if action.mode == "check":
                await service.node.hooks.cascade(
                    CascadeAction(parent_type="Cluster", parent_uuids=[cluster_uuid], mode="check"))
            else:
                await service.clusters.delete(cluster_uuid, action.mode)
    elif action.parent_type == "Cluster":
        vms = await db.run(lambda: [v.uuid for v in VmInstanceVO.select(VmInstanceVO.uuid)
                                    .where(VmInstanceVO.cluster_uuid.in_(uuids))])
        hosts = await db.run(lambda: [h.uuid for h in HostVO.select(HostVO.uuid)
                                      .where(HostVO.cluster_uuid.in_(uuids))])
        if action.mode == "check":
            await service.vms.check_removable(vms)
            for host_uuid in hosts:
                await service.node.hooks.cascade(CascadeAction(parent_type="Host", parent_uuids=[host_uuid], mode="check"))
            return
        for vm_uuid in vms:
            await service.vms.delete_by_cascade(vm_uuid, force=action.mode == "force")
        for host_uuid in hosts:
            await service.hosts.delete(host_uuid, action.mode)
    elif action.parent_type == "Host":
        vms = await db.run(lambda: [v.uuid for v in VmInstanceVO.select(VmInstanceVO.uuid)
                                    .where(VmInstanceVO.host_uuid.in_(uuids) | VmInstanceVO.last_host_uuid.in_(uuids))])
        if action.mode == "check":
            await service.vms.check_removable(vms)
            return
        for vm_uuid in vms:
            await service.vms.leave_host(vm_uuid, uuids, force=action.mode == "force")
