#!/usr/bin/env bash
# Make sure a real libvirtd with the QEMU driver (and virtlogd) runs on this machine, without
# systemd, as shared/notes/libvirt-on-debian12.md describes. Does nothing if qemu:///system
# already answers. Needs root. Exits non-zero, saying why, when the daemon does not come up.
set -euo pipefail

URI=qemu:///system
answers() { virsh -c "$URI" version >/dev/null 2>&1; }

if answers; then
    exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "libvirtd.sh: libvirtd is not running and starting it needs root" >&2
    exit 1
fi
for tool in libvirtd virtlogd virsh; do
    command -v "$tool" >/dev/null || { echo "libvirtd.sh: $tool not found (run scripts/bootstrap.sh)" >&2; exit 1; }
done

# The QEMU driver refuses to load without its user (normally created by libvirt-daemon-system).
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 ||
    useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt/qemu
# QEMU runs as libvirt-qemu, so it needs /dev/kvm as udev would set it up (root:kvm 0660).
# Without this libvirt finds KVM "not available now", re-probes QEMU's capabilities on every
# call (about 4 s each) and cannot start type='kvm' guests.
if [[ -c /dev/kvm ]]; then
    chgrp kvm /dev/kvm
    chmod 0660 /dev/kvm
fi

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
# Without virtlogd every domain start fails ("virtlogd-sock: No such file").
alive /var/run/virtlogd.pid || virtlogd -d
alive /var/run/libvirtd.pid || libvirtd -d

for _ in $(seq 1 100); do
    answers && exit 0
    sleep 0.1
done
echo "libvirtd.sh: $URI does not answer after 10 s:" >&2
virsh -c "$URI" version >&2 || true
exit 1
