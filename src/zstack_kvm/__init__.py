"""zstack-kvm: zones, clusters, KVM hosts and VM instances on libvirt.

Registered through the ``zstack.plugins`` entry point ``kvm`` (:mod:`zstack_kvm.plugin`).
"""
