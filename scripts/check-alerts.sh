#!/usr/bin/env bash
# Checks the shipped Prometheus files in contrib/prometheus/ with promtool: the rules file, the
# example configuration (with the rules it loads), and the rules' unit tests. Installs promtool
# (Debian's `prometheus` package) when it is missing, without starting the Prometheus server
# that comes with it.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=contrib/prometheus
tmp=""
policy=""
cleanup() {
    [ -n "$tmp" ] && rm -rf "$tmp"
    [ -n "$policy" ] && rm -f "$policy"
    return 0
}
trap cleanup EXIT

# The process ids of running Prometheus servers (from /proc: procps may be missing).
servers() {
    local f pid
    for f in /proc/[0-9]*/comm; do
        if [ "$(cat "$f" 2>/dev/null)" = prometheus ]; then
            pid="${f#/proc/}"
            echo "${pid%/comm}"
        fi
    done
}

if ! command -v promtool >/dev/null; then
    before="$(servers)"
    # The package's maintainer scripts start the server through invoke-rc.d or
    # deb-systemd-invoke; a policy-rc.d that answers 101 forbids that. Keep one already there.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
    if [ -n "$policy" ]; then
        rm -f "$policy"
        policy=""
    fi
    # Nor enabled for the next boot, on a machine that runs systemd.
    if [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
    started="$(comm -13 <(echo "$before" | sort) <(servers | sort))"
    if [ -n "$started" ]; then
        echo "check-alerts: installing promtool started a Prometheus server (${started//$'\n'/ }); stop it" >&2
        exit 1
    fi
fi
promtool --version | head -n 1

promtool check rules "$dir/reconciled.rules.yml"

# The example reads the rules from its own directory, as it would from /etc/prometheus/; check
# it there, which checks the rules it loads too.
tmp="$(mktemp -d)"
cp "$dir/prometheus.yml.example" "$tmp/prometheus.yml"
cp "$dir/reconciled.rules.yml" "$tmp/"
promtool check config "$tmp/prometheus.yml"

promtool test rules "$dir/reconciled.rules.test.yml"
