#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the integration binary, and the cross-check against
# the official stripe Python SDK (installed once from PyPI into sdk-venv under the cargo target
# directory in use: $CARGO_TARGET_DIR, or ./target).
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
venv="$target_dir/sdk-venv"
req=scripts/requirements-sdk.txt
if ! cmp -s "$req" "$venv/.installed" 2>/dev/null; then
    echo "scripts/test.sh: installing the stripe SDK cross-check into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$venv/.installed"
fi
case "$venv" in
    /*) export RECONCILED_STRIPE_SDK_PYTHON="$venv/bin/python" ;;
    *) export RECONCILED_STRIPE_SDK_PYTHON="$PWD/$venv/bin/python" ;;
esac

# The real MariaDB and PostgreSQL servers the shop-driver tests use (exports their URLs).
if [ -f scripts/dbs.sh ]; then
    # shellcheck source=scripts/dbs.sh
    source scripts/dbs.sh
fi

# The storage-fault tests (tests/it/faults.rs) mount a small tmpfs and run the daemon under
# strace: they need root, and run whenever this script runs as root.
# The admin page is tested in Debian's headless Chromium (tests/it/page.rs).
if [ "$(id -u)" = 0 ]; then
    command -v strace >/dev/null || { apt-get update -qq && apt-get install -y -qq strace; }
    command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
    export RECONCILED_FAULT_TESTS="${RECONCILED_FAULT_TESTS:-1}"
fi

# failpoints: test-only crash points used by the crash tests.
cargo test --all-targets --features failpoints "$@"
