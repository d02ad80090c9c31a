"""zstack-storage: primary storage on libvirt pools, images, volumes and snapshots.

Registered through the ``zstack.plugins`` entry point ``storage`` (:mod:`zstack_storage.plugin`).
"""
