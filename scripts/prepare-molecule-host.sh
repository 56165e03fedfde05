#!/usr/bin/env bash
# Prepares this machine to run Molecule scenarios on rootful podman (no Docker engine, no
# registry): the packages, podman's settings for this VM, a wheelhouse of the service's pinned
# requirements, and the instance images built from Debian's archive (molecule/image/). Idempotent:
# a second run with the same inputs changes nothing and takes seconds.
set -euo pipefail
IMAGE=${MOLECULE_IMAGE:-localhost/bento-fleet-debian12:latest}
WHEELHOUSE=${BENTO_FLEET_WHEELHOUSE:?the wheelhouse folder (the Makefile sets it)}
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

# The pinned requirements as wheels in one folder, fetched as this machine's pip is configured
# (its index, extra indexes, find-links, certificate: nothing here names one). The inference
# instances and their image install from it alone (--no-index); the copy of requirements.txt
# written last marks it complete.
if ! cmp -s "$here/requirements.txt" "$WHEELHOUSE/requirements.txt"; then
  mkdir -p "$WHEELHOUSE"
  rm -f "$WHEELHOUSE/requirements.txt"
  python3 -m pip wheel --quiet --disable-pip-version-check -r "$here/requirements.txt" -w "$WHEELHOUSE"
  cp "$here/requirements.txt" "$WHEELHOUSE/requirements.txt"
  echo "molecule host: wheelhouse $WHEELHOUSE filled"
fi

if ! podman image exists "$IMAGE"; then
  "$here/molecule/image/build.sh" "$IMAGE"
fi
"$here/molecule/image/images.sh" "$IMAGE" "$WHEELHOUSE"
echo "molecule host: ready ($IMAGE)"
