#!/usr/bin/env bash
# Builds the Debian package and checks it end to end (docs/install.md):
#   1. builds the release binary (a no-op when it is up to date) and packages it with
#      `cargo deb --no-build`, twice: the version from Cargo.toml (revision 1) and the same with
#      revision 2, to upgrade to;
#   2. checks the package's files, owners and modes (dpkg-deb -c), its control data and that it
#      has no conffiles (dpkg-deb -I), and that the packaged unit is systemd/reconciled.service
#      but for the user and the binary's path;
#   3. runs lintian, failing on any error or warning that packaging/deb/lintian-overrides does
#      not override (each override there says why);
#   4. installs, edits the configuration as an operator would, upgrades and purges the package
#      in a throwaway Debian root, asserting what each step must leave behind.
#
# The throwaway root is a `debootstrap --variant=minbase` of the host's Debian release, entered
# with chroot, rather than `dpkg --root` on an empty directory: dpkg --root still runs the
# maintainer scripts chrooted into that directory, so they need a shell, adduser, getent, sed
# and the binary's libraries there anyway, i.e. a real Debian root. The debootstrapped root is
# kept, as a tarball under the cargo target dir, so a warm run only unpacks it (seconds).
#
# Must run as root (chroot, mount, apt-get); CI does. Installs what it lacks: lintian, dpkg-dev
# (dpkg-shlibdeps, for the package's dependencies), debootstrap (apt-get) and cargo-deb (cargo
# install). cargo-deb writes root-owned archives itself, so fakeroot is not needed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "deb-check: must run as root: it installs packages and chroots into a Debian root" >&2
    exit 1
fi

started=$SECONDS
step() { printf '\n=== deb-check: %s (%ds)\n' "$*" "$((SECONDS - started))"; }
fail() {
    echo "deb-check: FAIL: $*" >&2
    exit 1
}

step "tools"
missing=()
command -v lintian >/dev/null || missing+=(lintian)
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" </dev/null
fi
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked

target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
version=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "reconciled"))')
work="$target/deb-check"
mkdir -p "$work"

step "build"
# Each upstream version needs its entry in the package's changelog (lintian wants one).
changelog_version=$(dpkg-parsechangelog -l packaging/deb/changelog -S Version)
[ "${changelog_version%-*}" = "$version" ] ||
    fail "packaging/deb/changelog is at $changelog_version: add an entry for $version-1"
cargo build --release
out="$target/debian"
deb1="$out/reconciled_${version}-1_amd64.deb"
# Not in target/debian, and built first: each cargo deb deletes the package's other versions
# there.
deb2="$work/reconciled_${version}-2_amd64.deb"
rm -f "$deb1" "$deb2"
cargo deb --no-build --fast --deb-version "$version-2" -o "$deb2" >/dev/null
cargo deb --no-build -o "$deb1" >/dev/null
[ -f "$deb1" ] || fail "no $deb1"
[ -f "$deb2" ] || fail "no $deb2"

step "contents"
listing=$(dpkg-deb -c "$deb1")
# has MODE PATH: the path is in the package with that mode, owned by root (cargo-deb writes
# numeric owners, which dpkg-deb lists as 0/0).
has() {
    awk -v m="$1" -v p="./$2" '$1 == m && ($2 == "0/0" || $2 == "root/root") && $NF == p { f = 1 }
        END { exit !f }' <<<"$listing" || fail "the package has no $2 with $1 root:root"
}
has -rwxr-xr-x usr/bin/reconciled
has -rw-r--r-- lib/systemd/system/reconciled.service
has -rw-r--r-- usr/share/lintian/overrides/reconciled
has -rw-r--r-- usr/share/doc/reconciled/copyright
has -rw-r--r-- usr/share/doc/reconciled/changelog.Debian.gz
has -rw-r--r-- usr/share/doc/reconciled/docs/install.md
# Nothing under /etc (it would be a conffile), no enablement symlinks, no store directory.
if grep -E ' \./(etc|var)/|\.wants/' <<<"$listing"; then
    fail "the package ships files in /etc, /var or a .wants directory"
fi
control=$(dpkg-deb --ctrl-tarfile "$deb1" | tar -t)
for script in postinst prerm postrm; do
    grep -qx "./$script" <<<"$control" || fail "no $script in the control archive"
done
if grep -qx './conffiles' <<<"$control"; then
    if dpkg-deb -I "$deb1" conffiles | grep -q reconciled.toml; then
        fail "the configuration is a conffile"
    fi
fi
info=$(dpkg-deb -I "$deb1")
grep -q '^ Package: reconciled$' <<<"$info" || fail "Package is not reconciled"
grep -q '^ Architecture: amd64$' <<<"$info" || fail "Architecture is not amd64"
grep -q '^ Depends:.*\badduser\b' <<<"$info" || fail "Depends lacks adduser"
# The maintainer scripts never enable or start the unit (try-restart on upgrade only restarts
# a running one).
if dpkg-deb -I "$deb1" postinst | grep -Ev '^\s*(#|echo)' |
    grep -E '(systemctl|deb-systemd-invoke)\s+(.*\s)?(start|enable)\b'; then
    fail "postinst enables or starts the unit"
fi
# The packaged unit is the hand-install unit with User=/Group= and /usr/bin: nothing else drifts.
unit_drift=$(diff <(sed -e '1,/^\[Unit\]$/d' -e 's|/usr/local/bin/reconciled|/usr/bin/reconciled|' \
    -e 's|^DynamicUser=yes$|User=reconciled\nGroup=reconciled|' systemd/reconciled.service) \
    <(dpkg-deb --fsys-tarfile "$deb1" | tar -xO ./lib/systemd/system/reconciled.service |
        sed '1,/^\[Unit\]$/d')) || fail "the packaged unit drifted from systemd/reconciled.service:
$unit_drift"
grep -qx 'ExecStart=/usr/bin/reconciled serve --config /etc/reconciled/reconciled.toml' \
    packaging/deb/reconciled.service || fail "the packaged unit's ExecStart"

step "lintian"
# Errors and warnings fail. The overridden tags are listed too (O:, each with its reason as N:),
# which is why this reads the tags rather than using --fail-on (that counts them as well).
tags=$(lintian --fail-on none --show-overrides --tag-display-limit 0 "$deb1" 2>&1) ||
    { echo "$tags"; fail "lintian did not run"; }
echo "$tags"
if grep -q '^[EW]: ' <<<"$tags"; then fail "lintian reported errors or warnings (above)"; fi

step "throwaway root"
. /etc/os-release
suite=${VERSION_CODENAME:-bookworm}
[ "${ID:-}" = debian ] || suite=bookworm
base="$work/$suite-minbase.tar.gz"
if [ ! -f "$base" ]; then
    fresh=$(mktemp -d "$work/debootstrap.XXXXXX")
    # adduser: the package depends on it. init-system-helpers: deb-systemd-helper, so the
    # maintainer scripts' systemd handling runs as it does on a real system.
    debootstrap --variant=minbase --include=adduser,init-system-helpers "$suite" "$fresh" \
        http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
        {
            tail -20 "$work/debootstrap.log"
            umount "$fresh/proc" "$fresh/sys" 2>/dev/null || true
            rm -rf --one-file-system "$fresh"
            fail "debootstrap"
        }
    tar -C "$fresh" --numeric-owner -czf "$base.tmp" .
    mv "$base.tmp" "$base"
    rm -rf --one-file-system "$fresh"
fi
root=$(mktemp -d "$work/root.XXXXXX")
cleanup() {
    umount "$root/proc" 2>/dev/null || true
    rm -rf --one-file-system "$root"
}
trap cleanup EXIT
tar -C "$root" --numeric-owner -xzf "$base"
chmod 755 "$root" # mktemp made it 0700: the root's / must be open to its users
mount -t proc proc "$root/proc"
# No daemon starts inside the root, whatever a script asks.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
cp "$deb1" "$deb2" "$root/tmp/"

in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
# dpkg_install DEB: install or upgrade as `apt install ./DEB` does, with no terminal: a conffile
# prompt would read end-of-file and fail the install, and the output is checked for one too.
dpkg_install() {
    local log
    log=$(in_root env DEBIAN_FRONTEND=noninteractive timeout 300 \
        apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "/tmp/$(basename "$1")" \
        </dev/null 2>&1) ||
        { echo "$log"; fail "installing $(basename "$1")"; }
    echo "$log" | sed 's/^/    /'
    if grep -Eiq "configuration file .*(modified|prompt)|\*\*\* .* \(Y/I/N/O/D/Z\)" <<<"$log"; then
        fail "installing $(basename "$1") asked about a configuration file"
    fi
}
owner_mode() { in_root stat -c '%U:%G %a' "$1"; }
unit_links() { find "$root/etc/systemd/system" -name 'reconciled.service' 2>/dev/null || true; }

step "install ${version}-1"
dpkg_install "$deb1"
in_root getent passwd reconciled | grep -q ':/var/lib/reconciled:/usr/sbin/nologin$' ||
    fail "no reconciled user with home /var/lib/reconciled and no login shell"
in_root getent group reconciled >/dev/null || fail "no reconciled group"
[ "$(owner_mode /etc/reconciled/reconciled.toml)" = "root:reconciled 640" ] ||
    fail "/etc/reconciled/reconciled.toml is $(owner_mode /etc/reconciled/reconciled.toml)"
[ "$(owner_mode /var/lib/reconciled)" = "reconciled:reconciled 750" ] ||
    fail "/var/lib/reconciled is $(owner_mode /var/lib/reconciled)"
[ -z "$(unit_links)" ] || fail "the unit is enabled: $(unit_links)"
[ -f "$root/lib/systemd/system/reconciled.service" ] || fail "no unit installed"
in_root /usr/bin/reconciled --version || fail "reconciled --version in the root"
grep -qx 'path = "/var/lib/reconciled/reconciled.db"' "$root/etc/reconciled/reconciled.toml" ||
    fail "the configuration's store is not /var/lib/reconciled/reconciled.db"
# As installed, check-config refuses it only for the placeholder secret; with a secret filled
# in, the reconciled user (as the unit's ExecStartPre) accepts it.
refused=$(in_root /usr/bin/reconciled check-config --config /etc/reconciled/reconciled.toml 2>&1) &&
    fail "check-config accepts the placeholder secret"
grep -q 'secrets\[0\]: is the example.s placeholder' <<<"$refused" ||
    fail "check-config refuses the installed configuration for another reason: $refused"

step "operator edits the configuration"
sed -i 's/whsec_REPLACE_WITH_YOUR_ENDPOINT_SECRET/whsec_deb_check_operator_secret/' \
    "$root/etc/reconciled/reconciled.toml"
echo '# edited by the operator' >>"$root/etc/reconciled/reconciled.toml"
in_root setpriv --reuid=reconciled --regid=reconciled --init-groups \
    /usr/bin/reconciled check-config --config /etc/reconciled/reconciled.toml >/dev/null ||
    fail "check-config, as the reconciled user, refuses the filled-in configuration"
edited=$(sha256sum <"$root/etc/reconciled/reconciled.toml")
# The store the daemon would write, and the enablement `systemctl enable reconciled` makes.
in_root setpriv --reuid=reconciled --regid=reconciled --init-groups \
    sh -c 'echo store >/var/lib/reconciled/reconciled.db'
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -s /lib/systemd/system/reconciled.service \
    "$root/etc/systemd/system/multi-user.target.wants/reconciled.service"

step "upgrade to ${version}-2"
uid=$(in_root id -u reconciled)
dpkg_install "$deb2"
[ "$(in_root dpkg-query -W -f '${Version}' reconciled)" = "${version}-2" ] || fail "not upgraded"
[ "$(sha256sum <"$root/etc/reconciled/reconciled.toml")" = "$edited" ] ||
    fail "the upgrade changed the edited configuration"
[ "$(owner_mode /etc/reconciled/reconciled.toml)" = "root:reconciled 640" ] ||
    fail "after the upgrade /etc/reconciled/reconciled.toml is $(owner_mode /etc/reconciled/reconciled.toml)"
[ "$(in_root id -u reconciled)" = "$uid" ] || fail "the upgrade changed the reconciled user"
[ -L "$root/etc/systemd/system/multi-user.target.wants/reconciled.service" ] ||
    fail "the upgrade dropped the operator's enablement"
in_root /usr/bin/reconciled --version >/dev/null || fail "reconciled --version after the upgrade"

step "purge"
log=$(in_root env DEBIAN_FRONTEND=noninteractive dpkg --purge reconciled </dev/null 2>&1) ||
    { echo "$log"; fail "purge"; }
echo "$log" | sed 's/^/    /'
for gone in /usr/bin/reconciled /lib/systemd/system/reconciled.service \
    /etc/reconciled/reconciled.toml; do
    [ ! -e "$root$gone" ] || fail "$gone is still there after purge"
done
[ -z "$(unit_links)" ] || fail "purge left the unit's symlinks: $(unit_links)"
[ "$(cat "$root/var/lib/reconciled/reconciled.db")" = store ] || fail "purge deleted the store"
[ "$(owner_mode /var/lib/reconciled)" = "reconciled:reconciled 750" ] ||
    fail "after purge /var/lib/reconciled is $(owner_mode /var/lib/reconciled)"

step "passed"
cat <<EOF
deb-check: $(basename "$deb1") ($(du -h "$deb1" | cut -f1)) and its upgrade $(basename "$deb2"):
  contents, control data, no conffiles, unit matches systemd/reconciled.service: ok
  lintian: no errors or warnings beyond the documented overrides
  in a $suite minbase root: install (user, config root:reconciled 0640, /var/lib/reconciled
  0750, unit not enabled, --version runs), upgrade keeps the edited config without a prompt,
  purge removes binary, unit, config and symlinks and keeps /var/lib/reconciled: ok
  took $((SECONDS - started))s
EOF
