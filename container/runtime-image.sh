#!/usr/bin/env bash
# container/runtime-image.sh [WHEELHOUSE]: the base of bento-fleet's container image, built on
# this machine from Debian's archive, since no container registry is needed or reachable:
# Debian 12 minbase (mmdebstrap) with its Python 3.11, and a venv at /app/.venv holding the
# pinned requirements (requirements.txt), installed by pip from WHEELHOUSE alone when one is
# given, else from pip's index. Tagged localhost/bento-fleet-runtime:latest, the base image that
# bentofile.yaml names; rebuilt only when its inputs change (their hash is in its label).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
wheelhouse=${1:-}
image=localhost/bento-fleet-runtime:latest

key=$(cat "$0" "$repo/requirements.txt" | sha256sum | cut -c1-16)
if [ "$(podman image inspect -f '{{index .Labels "bento-fleet.image-key"}}' "$image" 2>/dev/null)" = "$key" ]; then
  echo "runtime image: $image is up to date"
  exit 0
fi

root=$(mktemp -d /var/tmp/bento-fleet-runtime.XXXXXX)
ctr=bento-fleet-runtime-build
trap 'rm -rf "$root" "$root.tar"; podman rm -f "$ctr" >/dev/null 2>&1 || true' EXIT
mmdebstrap --variant=minbase --quiet \
  --include=python3,python3-venv,ca-certificates \
  --customize-hook='chroot "$1" apt-get clean' \
  bookworm "$root.tar"
podman import --quiet "$root.tar" localhost/bento-fleet-runtime:debian >/dev/null

mounts=(--volume "$repo/requirements.txt:/srv/requirements.txt:ro")
pip_args=(--no-cache-dir --disable-pip-version-check --quiet)
if [ -n "$wheelhouse" ]; then
  mounts+=(--volume "$wheelhouse:/srv/wheelhouse:ro")
  pip_args+=(--no-index --find-links /srv/wheelhouse)
fi
podman rm -f "$ctr" >/dev/null 2>&1 || true
podman run --name "$ctr" "${mounts[@]}" localhost/bento-fleet-runtime:debian /bin/sh -euc "
  python3 -m venv /app/.venv
  /app/.venv/bin/pip install ${pip_args[*]} -r /srv/requirements.txt"
podman commit --quiet --change "LABEL bento-fleet.image-key=$key" \
  --change 'ENV VIRTUAL_ENV=/app/.venv PATH=/app/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  "$ctr" "$image" >/dev/null
podman rm "$ctr" >/dev/null
podman rmi localhost/bento-fleet-runtime:debian >/dev/null
echo "runtime image: built $image"
