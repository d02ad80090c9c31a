"""Names of the flow chains several plugins contribute to, and the positions in them.

A plugin returns ``FlowContribution(chain=VmCreateFlows.CHAIN, flow=..., order=...)`` from
``zstack_flows``. Positions follow ZStack's ``createVmWorkFlowElements``: allocate host, then
volumes, then NICs and IPs, then instantiate on the hypervisor. Leave gaps so others can slot in.
"""

from __future__ import annotations


class VmCreateFlows:
    CHAIN = "vm-create"
    ALLOCATE_HOST = 100
    ALLOCATE_PRIMARY_STORAGE = 200
    ALLOCATE_VOLUME = 300
    ALLOCATE_NIC = 400
    ALLOCATE_IP = 500
    INSTANTIATE_PRE = 600
    CREATE_ON_HYPERVISOR = 700
    INSTANTIATE_POST = 800


class VmReleaseFlows:
    """Run when a VM is expunged: each service releases what it allocated."""

    CHAIN = "vm-expunge"
    DELETE_ON_HYPERVISOR = 100
    RELEASE_NIC = 200
    RELEASE_VOLUME = 300
    RETURN_CAPACITY = 400


class HostConnectFlows:
    """Run when a host connects or reconnects: facts, capacity, then realizing networks/storage.

    ``data`` holds ``"host"`` (its :class:`HostInventory`), ``"node"`` and ``"first_time"``
    (True when the host is being added). From ``CONNECT`` on, ``HostRunMsg`` reaches the host."""

    CHAIN = "host-connect"
    CONNECT = 100
    COLLECT_FACTS = 200
    CAPACITY = 300
    PREPARE_NETWORK = 400
    PREPARE_STORAGE = 500
