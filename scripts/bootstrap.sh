#!/usr/bin/env bash
# Set up a development checkout of zstack-py on Debian 12 with Python 3.11: Debian packages
# (libvirt, QEMU, network tools), a virtual environment at .venv, and editable installs of the
# four distributions plus the dev tools. Safe to run again: it only does what is missing.
#
#   bash scripts/bootstrap.sh          what `zstack node start` needs
#   bash scripts/bootstrap.sh --test   also what the test suite needs (PostgreSQL 15, MariaDB servers)
#
# ZSTACK_BOOTSTRAP_FORCE=1 reinstalls the Python packages even if nothing changed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

APT_PACKAGES=(
    pkg-config libvirt-dev                                   # libvirt-python builds from its sdist
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients  # a real libvirtd with the QEMU driver
    qemu-system-x86 qemu-utils                               # guests and qcow2 volumes
    dnsmasq-base nftables iproute2                           # DHCP, security groups, bridges
    iptables                                                 # libvirt 9.0 starts no network with an address without it
)
if [[ "${1:-}" == "--test" ]]; then
    APT_PACKAGES+=(postgresql-15)                            # throwaway clusters for multi-node tests
    APT_PACKAGES+=(mariadb-server)                           # throwaway MariaDB for tests/persistence
    APT_PACKAGES+=(udhcpc)                                   # a real DHCP lease from a netns in tests/network
fi

log() { printf 'bootstrap: %s\n' "$*" >&2; }

SUDO=()
if [[ "$(id -u)" != 0 ]]; then
    SUDO=(sudo)
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    log "creating .venv with $("$PYTHON" --version)"
    rm -rf .venv
    "$PYTHON" -m venv .venv
fi

# Reinstall only when a pyproject.toml (dependencies, entry points) or the interpreter changed;
# editable installs pick up new modules by themselves.
stamp=.venv/.zstack-bootstrap
want="$(cat pyproject.toml src/zstack_*/pyproject.toml | sha256sum | cut -d' ' -f1) $(.venv/bin/python -V)"
if [[ "${ZSTACK_BOOTSTRAP_FORCE:-}" == 1 || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    log "installing zstack-core, zstack-kvm, zstack-storage, zstack-network (editable) and dev tools"
    .venv/bin/python -m pip install -q --disable-pip-version-check \
        -e src/zstack_core -e src/zstack_kvm -e src/zstack_storage -e src/zstack_network \
        -e ".[dev]"
    printf '%s' "$want" >"$stamp"
fi
log "ready: .venv/bin/zstack"
