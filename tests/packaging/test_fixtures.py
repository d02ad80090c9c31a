"""The shared fixtures in tests/conftest.py give working services."""

from __future__ import annotations

import libvirt
import psycopg2


def test_libvirtd_serves_the_qemu_driver(libvirtd: str) -> None:
    assert libvirtd == "qemu:///system"
    conn = libvirt.open(libvirtd)
    try:
        assert conn.getType() == "QEMU"
        assert conn.getVersion() > 0  # the QEMU version, e.g. 7002000 for 7.2.0
        assert conn.getLibVersion() >= 9_000_000
    finally:
        conn.close()


def test_postgres_url_accepts_connections(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql://postgres@127.0.0.1:")
    assert postgres_url.endswith("/zstack")
    conn = psycopg2.connect(postgres_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1, current_database()")
            assert cur.fetchone() == (1, "zstack")
    finally:
        conn.close()
