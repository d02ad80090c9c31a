"""zstack-network: L2/L3 networks, IP ranges, IPAM, DHCP and security groups.

Registered through the ``zstack.plugins`` entry point ``network`` (:mod:`zstack_network.plugin`).
"""
