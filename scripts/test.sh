#!/usr/bin/env bash
# Run the test suite from a fresh Debian 12 machine: bootstrap, start libvirtd, run pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slow" tests/core`).
# Exits non-zero when a test fails and also when no test ran (pytest's exit code 5).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh --test

# A real libvirtd + QEMU for the end-to-end tests. The `libvirtd` fixture would start it too;
# starting it here once keeps parallel test workers from racing. If it cannot start, the tests
# that need it skip and say why.
bash scripts/libvirtd.sh || echo "test: libvirtd did not start; tests that need it will skip" >&2

status=0
.venv/bin/python -m pytest "$@" || status=$?
if ((status == 5)); then
    echo "test: pytest collected no tests; treating that as a failure" >&2
    exit 1
fi
exit "$status"
