"""Security groups: groups, rules, members, and the engine that turns them into per-VM rules.

The network service owns the rules engine; the hypervisor plugin owns applying rules to a host
(``zstack_security_group_backends``: a :class:`SecurityGroupBackend` per hypervisor type, the
seed's ``KVMSecurityGroupBackend``). For each VM the engine computes the complete list of
:class:`SecurityGroupRuleTO` for its NICs that belong to a group (a remote group becomes the
addresses of its members; see that class for the semantics a backend implements) and hands it to
the backend of the hypervisor type of the host the VM runs on.

A change re-applies only what changed: the engine keeps, per VM, a digest of the rules last
applied and the host they went to (``SecurityGroupAppliedVO``). After any change it recomputes
the rules of every VM that could be affected (members of the changed groups and of groups that
name them as remote) and calls the backend only for VMs whose digest or host differs. A host
that reconnects gets everything again (``force``). Work on one VM is serialized
(``sg-<vm uuid>`` task queue) so two changes never race on a host.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from zstack_core.db import utcnow
from zstack_core.errors import ErrorCode, SysErrors, ZStackError, invalid_argument
from zstack_core.header import HostInventory, SecurityGroupRuleTO, VmInstanceInventory
from zstack_core.header.backends import SecurityGroupBackend
from zstack_core.ownership import disown_sync, own_sync
from zstack_core.service import handles

from . import hosts
from .api import (
    APIAddSecurityGroupRuleMsg,
    APIAddVmNicToSecurityGroupMsg,
    APIAttachSecurityGroupToL3NetworkMsg,
    APICreateSecurityGroupMsg,
    APIDeleteSecurityGroupMsg,
    APIDeleteSecurityGroupRuleMsg,
    APIDeleteVmNicFromSecurityGroupMsg,
    APIDetachSecurityGroupFromL3NetworkMsg,
    APISecurityGroupEvent,
    APISecurityGroupRulesEvent,
    APIVmNicSecurityGroupEvent,
    SecurityGroupRuleAO,
)
from .errors import SecurityGroupErrors
from .inventories import SecurityGroupInventory, SecurityGroupRuleInventory, VmNicSecurityGroupRefInventory
from .l2 import check_resource_uuid
from zstack_core.prepared import Prepared
from .models import (
    L3NetworkVO,
    SecurityGroupAppliedVO,
    SecurityGroupL3NetworkRefVO,
    SecurityGroupRuleVO,
    SecurityGroupVO,
    VmNicSecurityGroupRefVO,
    VmNicVO,
    lock_row,
    write_transaction,
)

__all__ = ["ApplyReport", "SecurityGroupApi", "normalize_rule", "rules_digest", "security_group_inventories",
           "vm_rules_sync"]

log = logging.getLogger("zstack.network.sg")

DIRECTIONS = ("ingress", "egress")
PROTOCOLS = ("tcp", "udp", "icmp", "all")
ANYWHERE = "0.0.0.0/0"


@attrs.frozen(kw_only=True)
class NormalizedRule:
    type: str
    protocol: str
    start_port: int | None
    end_port: int | None
    allowed_cidr: str | None
    remote_security_group_uuid: str | None

    def key(self) -> tuple[Any, ...]:
        return attrs.astuple(self)


def normalize_rule(rule: SecurityGroupRuleAO, where: str) -> NormalizedRule:
    """Validate a rule (``SG.1000`` naming the fault and the rule's position)."""
    kind, protocol = rule.type.strip().lower(), rule.protocol.strip().lower()
    if kind not in DIRECTIONS:
        raise SecurityGroupErrors.exc("1000", f"{where}.type is {rule.type!r}; use ingress or egress", field=f"{where}.type")
    if protocol not in PROTOCOLS:
        raise SecurityGroupErrors.exc("1000", f"{where}.protocol is {rule.protocol!r}; use tcp, udp, icmp or all",
                                      field=f"{where}.protocol")
    start, end = rule.start_port, rule.end_port
    if protocol in ("tcp", "udp"):
        if start is None or end is None:
            raise SecurityGroupErrors.exc("1000", f"{where}: a {protocol} rule needs startPort and endPort",
                                          field=f"{where}.startPort")
        for name, port in (("startPort", start), ("endPort", end)):
            if not 1 <= port <= 65535:
                raise SecurityGroupErrors.exc("1000", f"{where}.{name} {port} is not in 1..65535", field=f"{where}.{name}")
        if start > end:
            raise SecurityGroupErrors.exc("1000", f"{where}: startPort {start} is greater than endPort {end}",
                                          field=f"{where}.startPort")
    else:
        if start not in (None, -1) or end not in (None, -1):
            raise SecurityGroupErrors.exc("1000", f"{where}: ports apply to tcp and udp only, not {protocol}",
                                          field=f"{where}.startPort")
        start = end = None
    cidr = rule.allowed_cidr
    if cidr is not None and rule.remote_security_group_uuid is not None:
        raise SecurityGroupErrors.exc("1000", f"{where}: give allowedCidr or remoteSecurityGroupUuid, not both",
                                      field=f"{where}.allowedCidr")
    if cidr is not None:
        try:
            cidr = str(ipaddress.IPv4Network(cidr.strip()))
        except (ValueError, TypeError) as exc:
            raise SecurityGroupErrors.exc("1000", f"{where}.allowedCidr {rule.allowed_cidr!r} is not an IPv4 CIDR: {exc}",
                                          field=f"{where}.allowedCidr") from None
    elif rule.remote_security_group_uuid is None:
        cidr = ANYWHERE
    return NormalizedRule(type=kind, protocol=protocol, start_port=start, end_port=end, allowed_cidr=cidr,
                          remote_security_group_uuid=rule.remote_security_group_uuid)


def security_group_inventories(rows: list[SecurityGroupVO]) -> list[SecurityGroupInventory]:
    """Rows as inventories with rules and attached L3 networks (database thread)."""
    if not rows:
        return []
    uuids = [r.uuid for r in rows]
    rules: dict[str, list[SecurityGroupRuleInventory]] = {u: [] for u in uuids}
    for rule in (SecurityGroupRuleVO.select().where(SecurityGroupRuleVO.security_group_uuid.in_(uuids))
                 .order_by(SecurityGroupRuleVO.created_at, SecurityGroupRuleVO.uuid)):
        rules[rule.security_group_uuid].append(rule.to_inventory())
    l3s: dict[str, list[str]] = {u: [] for u in uuids}
    for sg, l3 in (SecurityGroupL3NetworkRefVO.select(SecurityGroupL3NetworkRefVO.security_group_uuid,
                                                      SecurityGroupL3NetworkRefVO.l3_network_uuid)
                   .where(SecurityGroupL3NetworkRefVO.security_group_uuid.in_(uuids))
                   .order_by(SecurityGroupL3NetworkRefVO.id).tuples()):
        l3s[sg].append(l3)
    return [SecurityGroupInventory(uuid=r.uuid, name=r.name, description=r.description, state=r.state,
                                   rules=rules[r.uuid], attached_l3_network_uuids=l3s[r.uuid]) for r in rows]


def _group(uuid: str, lock: bool = False) -> SecurityGroupVO:
    row = lock_row(SecurityGroupVO, uuid) if lock else SecurityGroupVO.get_or_none(SecurityGroupVO.uuid == uuid)
    if row is None:
        raise SysErrors.exc("1004", f"no security group {uuid}")
    return row


# -- the engine -------------------------------------------------------------------------------


def vm_rules_sync(vm_uuid: str) -> list[SecurityGroupRuleTO]:
    """Every rule of ``vm_uuid``'s protected NICs, in a stable order (database thread)."""
    nics = {n.uuid: n for n in VmNicVO.select().where(VmNicVO.vm_instance_uuid == vm_uuid)}
    if not nics:
        return []
    memberships = list(VmNicSecurityGroupRefVO.select(VmNicSecurityGroupRefVO.vm_nic_uuid,
                                                      VmNicSecurityGroupRefVO.security_group_uuid)
                       .where(VmNicSecurityGroupRefVO.vm_nic_uuid.in_(list(nics))).tuples())
    if not memberships:
        return []
    group_uuids = {g for _, g in memberships}
    rules_of: dict[str, list[SecurityGroupRuleVO]] = {g: [] for g in group_uuids}
    for rule in SecurityGroupRuleVO.select().where(SecurityGroupRuleVO.security_group_uuid.in_(list(group_uuids))):
        rules_of[rule.security_group_uuid].append(rule)
    remote_groups = {r.remote_security_group_uuid for rs in rules_of.values() for r in rs if r.remote_security_group_uuid}
    members: dict[str, list[str]] = {g: [] for g in remote_groups}
    if remote_groups:
        query = (VmNicSecurityGroupRefVO.select(VmNicSecurityGroupRefVO.security_group_uuid, VmNicVO.ip)
                 .join(VmNicVO, on=(VmNicSecurityGroupRefVO.vm_nic_uuid == VmNicVO.uuid))
                 .where(VmNicSecurityGroupRefVO.security_group_uuid.in_(list(remote_groups)) & VmNicVO.ip.is_null(False)))
        for g, ip in query.tuples():
            members[g].append(ip)
    out: list[SecurityGroupRuleTO] = []
    for nic_uuid, group_uuid in sorted(memberships):
        nic = nics[nic_uuid]
        for r in rules_of[group_uuid]:
            remote = sorted(set(members.get(r.remote_security_group_uuid, [])), key=ipaddress.IPv4Address) \
                if r.remote_security_group_uuid else []
            out.append(SecurityGroupRuleTO(nic_uuid=nic.uuid, mac=nic.mac, ip=nic.ip, direction=r.type,
                                           protocol=r.protocol, start_port=r.start_port, end_port=r.end_port,
                                           cidr=r.allowed_cidr, remote_ips=remote, security_group_uuid=group_uuid))
    for nic_uuid in sorted({n for n, _ in memberships}):
        if not any(t.nic_uuid == nic_uuid and t.direction == "egress" for t in out):
            nic = nics[nic_uuid]  # ZStack's default: egress open until an egress rule restricts it
            out.append(SecurityGroupRuleTO(nic_uuid=nic.uuid, mac=nic.mac, ip=nic.ip, direction="egress",
                                           protocol="all", cidr=ANYWHERE))
    unique = {json.dumps(attrs.asdict(t), sort_keys=True): t for t in out}  # the same rule via two groups
    return [unique[k] for k in sorted(unique)]


def rules_digest(rules: Sequence[SecurityGroupRuleTO]) -> str:
    text = json.dumps([attrs.asdict(r) for r in rules], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def affected_vms_sync(group_uuids: Iterable[str]) -> set[str]:
    """VMs whose rules may change when ``group_uuids`` change: their members, and members of
    groups that name them as remote (database thread)."""
    groups = set(group_uuids)
    if not groups:
        return set()
    referencing = {g for (g,) in SecurityGroupRuleVO.select(SecurityGroupRuleVO.security_group_uuid)
                   .where(SecurityGroupRuleVO.remote_security_group_uuid.in_(list(groups))).tuples()}
    return {v for (v,) in VmNicSecurityGroupRefVO.select(VmNicSecurityGroupRefVO.vm_instance_uuid)
            .where(VmNicSecurityGroupRefVO.security_group_uuid.in_(list(groups | referencing))).distinct().tuples()}


_INVOLVED_ONE = Prepared(lambda p: VmNicSecurityGroupRefVO.select(VmNicSecurityGroupRefVO.vm_instance_uuid)
                         .where(VmNicSecurityGroupRefVO.vm_instance_uuid == p.vm)
                         .union(SecurityGroupAppliedVO.select(SecurityGroupAppliedVO.vm_instance_uuid)
                                .where(SecurityGroupAppliedVO.vm_instance_uuid == p.vm)))


def involved_vms_sync(vm_uuids: Sequence[str]) -> list[str]:
    """Those of ``vm_uuids`` with a NIC in a security group or rules applied somewhere (database
    thread, one statement); for the others there is nothing to apply or clean."""
    if len(vm_uuids) == 1:
        return [v for (v,) in _INVOLVED_ONE.run(vm=vm_uuids[0])]
    query = (VmNicSecurityGroupRefVO.select(VmNicSecurityGroupRefVO.vm_instance_uuid)
             .where(VmNicSecurityGroupRefVO.vm_instance_uuid.in_(list(vm_uuids)))
             .union(SecurityGroupAppliedVO.select(SecurityGroupAppliedVO.vm_instance_uuid)
                    .where(SecurityGroupAppliedVO.vm_instance_uuid.in_(list(vm_uuids)))))
    return sorted({v for (v,) in query.tuples()})


@attrs.define(kw_only=True)
class ApplyReport:
    """What one re-evaluation did, per VM UUID."""

    applied: list[str] = attrs.field(factory=list)
    unchanged: list[str] = attrs.field(factory=list)
    cleaned: list[str] = attrs.field(factory=list)
    not_running: list[str] = attrs.field(factory=list)
    errors: dict[str, ErrorCode] = attrs.field(factory=dict)

    def merge(self, other: ApplyReport) -> None:
        for name in ("applied", "unchanged", "cleaned", "not_running"):
            getattr(self, name).extend(getattr(other, name))
        self.errors.update(other.errors)


class SecurityGroupApi:
    """Security-group handlers and the rules engine (service mixin)."""

    node: Any

    def backend(self, hypervisor_type: str) -> SecurityGroupBackend:
        for b in self.node.extension("security_group_backends"):
            if b.hypervisor_type == hypervisor_type:
                return b  # type: ignore[no-any-return]
        known = sorted(b.hypervisor_type for b in self.node.extension("security_group_backends"))
        raise SecurityGroupErrors.exc("1003", f"no plugin registered a security-group backend for hypervisor type "
                                              f"{hypervisor_type!r} (registered: {', '.join(known) or 'none'})")

    async def apply_vms(self, vm_uuids: Iterable[str], force: bool = False) -> ApplyReport:
        """Bring the rules of ``vm_uuids`` on their hosts up to date; ``force`` ignores digests.
        Without ``force``, VMs in no security group and without rules applied anywhere are
        skipped (they appear in no list of the report)."""
        report = ApplyReport()
        wanted = sorted(set(vm_uuids))
        if not force and wanted:
            # Most VMs are in no security group and never had rules applied (every VM create
            # passes here when it starts running): one statement finds the ones that matter.
            wanted = await self.node.db.run(involved_vms_sync, wanted)
        if not wanted:
            return report
        vms = await hosts.vms(self.node, wanted)
        for vm_uuid in wanted:
            one = await self.node.tasks.run(f"sg-{vm_uuid}", lambda v=vm_uuid: self._apply_vm(v, vms.get(v), force))
            report.merge(one)
        return report

    async def _apply_vm(self, vm_uuid: str, vm: VmInstanceInventory | None, force: bool) -> ApplyReport:
        report = ApplyReport()
        rules = await self.node.db.run(vm_rules_sync, vm_uuid)
        applied = await self.node.db.run(lambda: SecurityGroupAppliedVO.get_or_none(
            SecurityGroupAppliedVO.vm_instance_uuid == vm_uuid))
        running_on = vm.host_uuid if vm is not None and vm.state == "Running" and vm.host_uuid else None
        if applied is not None and (running_on is None or not rules or applied.host_uuid != running_on):
            # Rules left where the VM no longer runs, or that no longer exist: take them away.
            try:
                await self._cleanup(vm_uuid, applied.host_uuid)
            except ZStackError as exc:
                report.errors[vm_uuid] = exc.error
                log.warning("%s", exc.error)
            await self.node.db.run(lambda: SecurityGroupAppliedVO.delete().where(
                SecurityGroupAppliedVO.vm_instance_uuid == vm_uuid).execute())
            report.cleaned.append(vm_uuid)
            applied = None
        if running_on is None:
            report.not_running.append(vm_uuid)
            return report
        if not rules:
            return report
        digest = rules_digest(rules)
        if not force and applied is not None and applied.digest == digest:
            report.unchanged.append(vm_uuid)
            return report
        try:
            host = await hosts.host(self.node, running_on)
            if host is None:
                raise SysErrors.exc("1004", f"no host {running_on}")
            backend = self.backend(host.hypervisor_type)
            try:
                await backend.apply_rules(host, vm_uuid, rules)
            except Exception as exc:
                cause = exc.error if isinstance(exc, ZStackError) else ErrorCode(
                    code="SYS.1000", description="internal error", details=f"{type(exc).__name__}: {exc}")
                raise SecurityGroupErrors.exc("1004", f"{len(rules)} rule(s) of VM {vm_uuid} on host {host.name}",
                                              cause=cause) from exc
        except ZStackError as exc:
            log.warning("security-group rules of VM %s not applied: %s", vm_uuid, exc.error)
            report.errors[vm_uuid] = exc.error
            return report

        def record() -> None:
            with write_transaction():
                SecurityGroupAppliedVO.delete().where(SecurityGroupAppliedVO.vm_instance_uuid == vm_uuid).execute()
                SecurityGroupAppliedVO.insert(vm_instance_uuid=vm_uuid, host_uuid=running_on, digest=digest,
                                              applied_at=utcnow()).execute()

        await self.node.db.run(record)
        report.applied.append(vm_uuid)
        return report

    async def _cleanup(self, vm_uuid: str, host_uuid: str) -> None:
        host = await hosts.host(self.node, host_uuid)
        if host is None:
            return  # the host is gone, and its rules with it
        try:
            await self.backend(host.hypervisor_type).cleanup(host, vm_uuid)
        except ZStackError:
            raise
        except Exception as exc:
            raise SecurityGroupErrors.exc("1004", f"cleaning rules of VM {vm_uuid} on host {host.name}: "
                                                  f"{type(exc).__name__}: {exc}") from exc

    async def reapply_groups(self, group_uuids: Iterable[str], also_vms: Iterable[str] = ()) -> ApplyReport:
        vms = await self.node.db.run(affected_vms_sync, list(group_uuids))
        return await self.apply_vms(vms | set(also_vms))

    async def reapply_host(self, host: HostInventory) -> ApplyReport:
        """Everything for the VMs running on ``host`` (it reconnected and may have lost it all)."""
        if "VmInstance" not in self.node.query.resources:
            return ApplyReport()
        running = await self.node.query.find("VmInstance", [("hostUuid", "=", host.uuid), ("state", "=", "Running")],
                                             limit=None)
        return await self.apply_vms([v.uuid for v in running], force=True)

    # -- APIs ---------------------------------------------------------------------------------

    async def _inventory(self, uuid: str) -> SecurityGroupInventory:
        return (await self.node.db.run(lambda: security_group_inventories([_group(uuid)])))[0]

    @handles(APICreateSecurityGroupMsg)
    async def create_security_group(self, msg: APICreateSecurityGroupMsg) -> APISecurityGroupEvent:
        check_resource_uuid(msg.resource_uuid)
        if not msg.name.strip():
            raise invalid_argument("name must not be empty", "name")

        def create() -> SecurityGroupInventory:
            with write_transaction():
                kwargs = {"uuid": msg.resource_uuid} if msg.resource_uuid else {}
                row = SecurityGroupVO.create(name=msg.name, description=msg.description, **kwargs)
                own_sync(row.uuid, "SecurityGroup", msg.account_uuid)
                if msg.system_tags:
                    self.node.tags.create_sync(row.uuid, "SecurityGroup", msg.system_tags)
                return security_group_inventories([row])[0]

        return APISecurityGroupEvent(inventory=await self.node.db.run(create))

    @handles(APIDeleteSecurityGroupMsg)
    async def delete_security_group(self, msg: APIDeleteSecurityGroupMsg) -> APISecurityGroupEvent:
        def delete() -> tuple[SecurityGroupInventory, set[str]]:
            with write_transaction():
                row = _group(msg.uuid, lock=True)
                inv = security_group_inventories([row])[0]
                affected = affected_vms_sync([msg.uuid])
                referencing = [r.security_group_uuid for r in SecurityGroupRuleVO.select().where(
                    SecurityGroupRuleVO.remote_security_group_uuid == msg.uuid)]
                for rule in SecurityGroupRuleVO.select().where(
                        (SecurityGroupRuleVO.remote_security_group_uuid == msg.uuid)
                        | (SecurityGroupRuleVO.security_group_uuid == msg.uuid)):
                    disown_sync(rule.uuid)
                    rule.delete_instance()
                for ref in VmNicSecurityGroupRefVO.select().where(VmNicSecurityGroupRefVO.security_group_uuid == msg.uuid):
                    disown_sync(ref.uuid)
                    ref.delete_instance()
                SecurityGroupL3NetworkRefVO.delete().where(SecurityGroupL3NetworkRefVO.security_group_uuid == msg.uuid) \
                    .execute()
                row.delete_instance()
                self.node.tags.delete_sync(msg.uuid)
                disown_sync(msg.uuid)
                return inv, affected | affected_vms_sync(referencing)

        inv, affected = await self.node.db.run(delete)
        await self.apply_vms(affected)
        return APISecurityGroupEvent(inventory=inv)

    @handles(APIAddSecurityGroupRuleMsg)
    async def add_rules(self, msg: APIAddSecurityGroupRuleMsg) -> APISecurityGroupEvent:
        if not msg.rules:
            raise invalid_argument("rules must not be empty", "rules")
        rules = [normalize_rule(r, f"rules[{i}]") for i, r in enumerate(msg.rules)]
        seen: dict[tuple[Any, ...], int] = {}
        for i, r in enumerate(rules):
            if r.key() in seen:
                raise SecurityGroupErrors.exc("1001", f"rules[{i}] repeats rules[{seen[r.key()]}]")
            seen[r.key()] = i

        def add() -> None:
            with write_transaction():
                _group(msg.security_group_uuid, lock=True)
                for r in rules:
                    if r.remote_security_group_uuid is not None:
                        _group(r.remote_security_group_uuid)
                existing = {NormalizedRule(type=e.type, protocol=e.protocol, start_port=e.start_port,
                                           end_port=e.end_port, allowed_cidr=e.allowed_cidr,
                                           remote_security_group_uuid=e.remote_security_group_uuid).key(): e.uuid
                            for e in SecurityGroupRuleVO.select().where(
                                SecurityGroupRuleVO.security_group_uuid == msg.security_group_uuid)}
                for i, r in enumerate(rules):
                    if r.key() in existing:
                        raise SecurityGroupErrors.exc("1001", f"rules[{i}] duplicates rule {existing[r.key()]}")
                for r in rules:
                    row = SecurityGroupRuleVO.create(security_group_uuid=msg.security_group_uuid, **attrs.asdict(r))
                    own_sync(row.uuid, "SecurityGroupRule", msg.account_uuid)

        await self.node.db.run(add)
        await self.reapply_groups([msg.security_group_uuid])
        return APISecurityGroupEvent(inventory=await self._inventory(msg.security_group_uuid))

    @handles(APIDeleteSecurityGroupRuleMsg)
    async def delete_rules(self, msg: APIDeleteSecurityGroupRuleMsg) -> APISecurityGroupRulesEvent:
        def delete() -> list[SecurityGroupRuleInventory]:
            with write_transaction():
                rows = list(SecurityGroupRuleVO.select().where(SecurityGroupRuleVO.uuid.in_(msg.rule_uuids)))
                missing = set(msg.rule_uuids) - {r.uuid for r in rows}
                if missing:
                    raise SysErrors.exc("1004", f"no security group rule {', '.join(sorted(missing))}")
                for row in rows:
                    disown_sync(row.uuid)
                    row.delete_instance()
                return [r.to_inventory() for r in rows]

        gone = await self.node.db.run(delete)
        await self.reapply_groups({r.security_group_uuid for r in gone})
        return APISecurityGroupRulesEvent(inventories=gone)

    @handles(APIAttachSecurityGroupToL3NetworkMsg)
    async def attach_to_l3(self, msg: APIAttachSecurityGroupToL3NetworkMsg) -> APISecurityGroupEvent:
        def attach() -> None:
            with write_transaction():
                _group(msg.security_group_uuid, lock=True)
                if L3NetworkVO.get_or_none(L3NetworkVO.uuid == msg.l3_network_uuid) is None:
                    raise SysErrors.exc("1004", f"no L3 network {msg.l3_network_uuid}")
                SecurityGroupL3NetworkRefVO.insert(security_group_uuid=msg.security_group_uuid,
                                                   l3_network_uuid=msg.l3_network_uuid).on_conflict_ignore().execute()

        await self.node.db.run(attach)
        return APISecurityGroupEvent(inventory=await self._inventory(msg.security_group_uuid))

    @handles(APIDetachSecurityGroupFromL3NetworkMsg)
    async def detach_from_l3(self, msg: APIDetachSecurityGroupFromL3NetworkMsg) -> APISecurityGroupEvent:
        def detach() -> set[str]:
            with write_transaction():
                _group(msg.security_group_uuid, lock=True)
                n = SecurityGroupL3NetworkRefVO.delete().where(
                    (SecurityGroupL3NetworkRefVO.security_group_uuid == msg.security_group_uuid)
                    & (SecurityGroupL3NetworkRefVO.l3_network_uuid == msg.l3_network_uuid)).execute()
                if not n:
                    raise SecurityGroupErrors.exc("1002", f"L3 network {msg.l3_network_uuid} is not attached to "
                                                          f"security group {msg.security_group_uuid}")
                refs = list(VmNicSecurityGroupRefVO.select().join(VmNicVO, on=(
                    VmNicSecurityGroupRefVO.vm_nic_uuid == VmNicVO.uuid)).where(
                    (VmNicSecurityGroupRefVO.security_group_uuid == msg.security_group_uuid)
                    & (VmNicVO.l3_network_uuid == msg.l3_network_uuid)))
                for ref in refs:
                    disown_sync(ref.uuid)
                    ref.delete_instance()
                return {r.vm_instance_uuid for r in refs}

        left = await self.node.db.run(detach)
        await self.reapply_groups([msg.security_group_uuid], left)
        return APISecurityGroupEvent(inventory=await self._inventory(msg.security_group_uuid))

    @handles(APIAddVmNicToSecurityGroupMsg)
    async def add_nics(self, msg: APIAddVmNicToSecurityGroupMsg) -> APIVmNicSecurityGroupEvent:
        if not msg.vm_nic_uuids:
            raise invalid_argument("vmNicUuids must not be empty", "vmNicUuids")

        def add() -> list[VmNicSecurityGroupRefInventory]:
            with write_transaction():
                _group(msg.security_group_uuid, lock=True)
                nics = {n.uuid: n for n in VmNicVO.select().where(VmNicVO.uuid.in_(msg.vm_nic_uuids))}
                missing = [u for u in msg.vm_nic_uuids if u not in nics]
                if missing:
                    raise SysErrors.exc("1004", f"no VM NIC {', '.join(missing)}")
                attached = {u for (u,) in SecurityGroupL3NetworkRefVO.select(SecurityGroupL3NetworkRefVO.l3_network_uuid)
                            .where(SecurityGroupL3NetworkRefVO.security_group_uuid == msg.security_group_uuid).tuples()}
                for nic in nics.values():
                    if nic.l3_network_uuid not in attached:
                        raise SecurityGroupErrors.exc("1002", f"NIC {nic.uuid} is on L3 network {nic.l3_network_uuid}, "
                                                              f"which is not attached to security group "
                                                              f"{msg.security_group_uuid}")
                out = []
                for nic in nics.values():
                    ref = VmNicSecurityGroupRefVO.get_or_none((VmNicSecurityGroupRefVO.vm_nic_uuid == nic.uuid) & (
                        VmNicSecurityGroupRefVO.security_group_uuid == msg.security_group_uuid))
                    if ref is None:
                        ref = VmNicSecurityGroupRefVO.create(vm_nic_uuid=nic.uuid, vm_instance_uuid=nic.vm_instance_uuid,
                                                             security_group_uuid=msg.security_group_uuid)
                        own_sync(ref.uuid, "VmNicSecurityGroupRef", msg.account_uuid)
                    out.append(ref.to_inventory())
                return out

        refs = await self.node.db.run(add)
        await self.reapply_groups([msg.security_group_uuid])
        return APIVmNicSecurityGroupEvent(inventories=refs)

    @handles(APIDeleteVmNicFromSecurityGroupMsg)
    async def delete_nics(self, msg: APIDeleteVmNicFromSecurityGroupMsg) -> APIVmNicSecurityGroupEvent:
        def delete() -> list[VmNicSecurityGroupRefInventory]:
            with write_transaction():
                _group(msg.security_group_uuid, lock=True)
                refs = list(VmNicSecurityGroupRefVO.select().where(
                    (VmNicSecurityGroupRefVO.security_group_uuid == msg.security_group_uuid)
                    & VmNicSecurityGroupRefVO.vm_nic_uuid.in_(msg.vm_nic_uuids)))
                missing = set(msg.vm_nic_uuids) - {r.vm_nic_uuid for r in refs}
                if missing:
                    raise SysErrors.exc("1004", f"NIC(s) {', '.join(sorted(missing))} are not in security group "
                                                f"{msg.security_group_uuid}")
                out = [r.to_inventory() for r in refs]
                for ref in refs:
                    disown_sync(ref.uuid)
                    ref.delete_instance()
                return out

        refs = await self.node.db.run(delete)
        await self.reapply_groups([msg.security_group_uuid], {r.vm_instance_uuid for r in refs})
        return APIVmNicSecurityGroupEvent(inventories=refs)
