#!/usr/bin/env bash
# Prepares this machine to run Molecule scenarios on rootful podman (no Docker engine, no
# registry): the packages, podman's settings for this VM, and the instance image built from
# Debian's archive. Idempotent: a second run changes nothing and takes a second.
set -euo pipefail
IMAGE=${MOLECULE_IMAGE:-localhost/bento-fleet-debian12:latest}
here=$(cd "$(dirname "$0")/.." && pwd)

if [ "$(id -u)" -ne 0 ]; then
  echo "molecule host: run as root (rootful podman, apt-get)" >&2
  exit 1
fi

packages=(podman runc netavark aardvark-dns iptables mmdebstrap)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "molecule host: installed ${missing[*]}"
fi

# Podman's defaults do not fit this VM: its ulimits exceed the hard limits, crun refuses the
# hybrid cgroup layout, and there is no journald to log events to.
conf=/etc/containers/containers.conf
want=$(cat "$here/molecule/image/containers.conf")
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
  mkdir -p /etc/containers
  printf '%s\n' "$want" > "$conf"
  echo "molecule host: wrote $conf"
fi

if ! podman image exists "$IMAGE"; then
  "$here/molecule/image/build.sh" "$IMAGE"
fi
echo "molecule host: ready ($IMAGE)"
