#!/usr/bin/env bash
# Build the lab's base image (Debian bookworm, systemd as PID 1) with
# debootstrap and import it into podman. The image is tagged with a hash of
# its recipe (this script and packages.txt): an unchanged recipe is a no-op.
#
#   lab/image/build.sh            build if missing, print the image name
#   LAB_MIRROR=URL lab/image/...  use that Debian mirror (default: the host's)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
: "${CONTAINERS_CONF:=$here/../containers.conf}"
export CONTAINERS_CONF
suite=bookworm
recipe_hash="$(cat "$here/build.sh" "$here/packages.txt" | sha256sum | cut -c1-12)"
image="localhost/halfbridge-lab:$recipe_hash"

if podman image exists "$image"; then
  echo "$image"
  exit 0
fi

# The mirror this host's apt already uses for a suite, unless told otherwise.
host_mirror() {
  local suite="$1" f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite && uri != "") { print uri; exit } }
      /^$/ { uri = "" }' "$f"
  done
  if [ -f /etc/apt/sources.list ]; then
    awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }' /etc/apt/sources.list
  fi
}
mirror="${LAB_MIRROR:-$(host_mirror "$suite" | head -n1)}"
security_mirror="${LAB_SECURITY_MIRROR:-$(host_mirror "$suite-security" | head -n1)}"
if [ -z "$mirror" ]; then
  echo "build.sh: no Debian mirror for $suite in this host's apt sources; set LAB_MIRROR" >&2
  exit 1
fi

# A lab network that contains the mirror's address would route apt's traffic
# into the lab instead of to the mirror (some sandboxes put their package
# proxy on documentation ranges): refuse it here, with a sentence.
if [ -n "${LAB_SUBNETS:-}" ]; then
  for url in "$mirror" "$security_mirror"; do
    [ -n "$url" ] || continue
    host="$(printf '%s' "$url" | sed -E 's#^[a-z+]+://([^/:]+).*#\1#')"
    getent ahostsv4 "$host" | awk '{ print $1 }' | sort -u | while read -r address; do
      python3 - "$address" $LAB_SUBNETS <<'PY'
import ipaddress, sys
address = ipaddress.ip_address(sys.argv[1])
for subnet in sys.argv[2:]:
    if address in ipaddress.ip_network(subnet):
        sys.exit(f"build.sh: the Debian mirror resolves to {address}, inside the lab network {subnet}; "
                 "choose other lab_network_defs subnets in inventories/lab/group_vars/all/lab.yml")
PY
    done
  done
fi

packages="$(grep -v '^\s*#' "$here/packages.txt" | grep -v '^\s*$' | paste -sd, -)"
workdir="$(mktemp -d /var/tmp/halfbridge-lab-image.XXXXXX)"
trap 'rm -rf "$workdir"' EXIT
rootfs="$workdir/rootfs"

echo "build.sh: debootstrap $suite from $mirror" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >"$workdir/debootstrap.log" 2>&1 || {
  tail -n 30 "$workdir/debootstrap.log" >&2
  exit 1
}

# Units that make no sense in a container, or wait for hardware it has not.
for unit in getty.target console-getty.service systemd-udevd.service \
  systemd-udev-trigger.service systemd-remount-fs.service \
  systemd-firstboot.service sys-kernel-debug.mount dev-hugepages.mount \
  apt-daily.timer apt-daily-upgrade.timer; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
# Lean apt, as on a production gateway.
cat >"$rootfs/etc/apt/apt.conf.d/90halfbridge-lab" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Retries "3";
APT
# The same suites as a real bookworm host: updates and security fixes too.
{
  echo "deb $mirror $suite main"
  echo "deb $mirror $suite-updates main"
  if [ -n "$security_mirror" ]; then echo "deb $security_mirror $suite-security main"; fi
} >"$rootfs/etc/apt/sources.list"
# Containers get their hostname and resolver from podman.
rm -f "$rootfs/etc/hostname" "$rootfs/etc/machine-id"
: >"$rootfs/etc/machine-id"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
# No package lists in the image: make them look old, so that the first
# `apt: update_cache: true, cache_valid_time: ...` of a role does update.
mkdir -p "$rootfs/var/lib/apt/periodic"
touch -d @0 "$rootfs/var/lib/apt/lists"

tar -C "$rootfs" --numeric-owner -c . | podman import --quiet \
  --change 'CMD ["/sbin/init"]' \
  --change 'ENV container=podman' \
  --change 'STOPSIGNAL SIGRTMIN+3' \
  --message "halfbridge lab base, recipe $recipe_hash" \
  - "$image" >/dev/null
# Keep one image of the lab: drop the ones of older recipes.
podman images --format '{{.Repository}}:{{.Tag}}' \
  | grep '^localhost/halfbridge-lab:' | grep -v ":$recipe_hash\$" \
  | xargs -r podman rmi -f >/dev/null 2>&1 || true
echo "$image"
