#!/usr/bin/env bash
# Prepares this machine to run Molecule scenarios on rootful podman (no Docker engine, no
# registry): the podman host (scripts/prepare-podman-host.sh: packages, settings, the wheelhouse)
# and the instance images built from Debian's archive (molecule/image/). Idempotent:
# a second run with the same inputs changes nothing and takes seconds.
set -euo pipefail
IMAGE=${MOLECULE_IMAGE:-localhost/bento-fleet-debian12:latest}
WHEELHOUSE=${BENTO_FLEET_WHEELHOUSE:?the wheelhouse folder (the Makefile sets it)}
here=$(cd "$(dirname "$0")/.." && pwd)

"$here/scripts/prepare-podman-host.sh"
if ! podman image exists "$IMAGE"; then
  "$here/molecule/image/build.sh" "$IMAGE"
fi
"$here/molecule/image/images.sh" "$IMAGE" "$WHEELHOUSE"
echo "molecule host: ready ($IMAGE)"
