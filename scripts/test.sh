#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the integration binary, and the cross-check against
# the official stripe Python SDK (installed once into target/sdk-venv from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/sdk-venv
req=scripts/requirements-sdk.txt
if ! cmp -s "$req" "$venv/.installed" 2>/dev/null; then
    echo "scripts/test.sh: installing the stripe SDK cross-check into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$venv/.installed"
fi
export RECONCILED_STRIPE_SDK_PYTHON="$PWD/$venv/bin/python"

# The real MariaDB and PostgreSQL servers the shop-driver tests use (exports their URLs).
if [ -f scripts/dbs.sh ]; then
    # shellcheck source=scripts/dbs.sh
    source scripts/dbs.sh
fi

# failpoints: test-only crash points used by the crash tests.
cargo test --all-targets --features failpoints "$@"
