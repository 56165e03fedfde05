#!/usr/bin/env bash
# Prepares this machine to build and run containers on rootful podman (no Docker engine, no
# registry): the packages, podman's settings for this VM, and a wheelhouse of the service's pinned
# requirements, from which the Molecule instances and the container image install. Idempotent:
# a second run with the same inputs changes nothing and takes seconds.
set -euo pipefail
WHEELHOUSE=${BENTO_FLEET_WHEELHOUSE:?the wheelhouse folder (the Makefile sets it)}
here=$(cd "$(dirname "$0")/.." && pwd)

if [ "$(id -u)" -ne 0 ]; then
  echo "podman host: run as root (rootful podman, apt-get)" >&2
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
  echo "podman host: installed ${missing[*]}"
fi

# Podman's defaults do not fit this VM: its ulimits exceed the hard limits, crun refuses the
# hybrid cgroup layout, and there is no journald to log events to.
conf=/etc/containers/containers.conf
want=$(cat "$here/molecule/image/containers.conf")
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
  mkdir -p /etc/containers
  printf '%s\n' "$want" > "$conf"
  echo "podman host: wrote $conf"
fi

# The pinned requirements as wheels in one folder, fetched as this machine's pip is configured
# (its index, extra indexes, find-links, certificate: nothing here names one). The inference
# instances, their image and the container image's base install from it alone (--no-index); the
# copy of requirements.txt written last marks it complete.
if ! cmp -s "$here/requirements.txt" "$WHEELHOUSE/requirements.txt"; then
  mkdir -p "$WHEELHOUSE"
  rm -f "$WHEELHOUSE/requirements.txt"
  python3 -m pip wheel --quiet --disable-pip-version-check -r "$here/requirements.txt" -w "$WHEELHOUSE"
  cp "$here/requirements.txt" "$WHEELHOUSE/requirements.txt"
  echo "podman host: wheelhouse $WHEELHOUSE filled"
fi

