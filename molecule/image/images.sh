#!/usr/bin/env bash
# images.sh BARE WHEELHOUSE: the instance images Molecule starts from, all built on this machine
# from Debian's archive (no registry):
#   localhost/bento-fleet-debian12-preloaded:GROUP  the bare image with GROUP's packages
#       (preload.sh) and, on inference, the service's venv for requirements.txt, built from the
#       wheelhouse exactly as bento_service builds it, under the name the role gives it;
#   localhost/bento-fleet-debian12-bare:GROUP       the bare image itself, under the same names,
#       so that MOLECULE_IMAGE_SET=bare runs the scenario from nothing.
# Each preloaded image carries the hash of its inputs; a run with the same inputs builds nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bare=$1 wheelhouse=$2
# shellcheck source=molecule/image/preload.sh
source "$here/preload.sh"
groups=(gateways inference databases monitoring acme)

# The inputs: the bare image, these lists and this script, and the pins the venv is built from.
key=$( { podman image inspect -f '{{.Id}}' "$bare"; cat "$here/preload.sh" "$0" "$wheelhouse/requirements.txt"; } \
       | sha256sum | cut -c1-16)
label() { podman image inspect -f '{{index .Labels "bento-fleet.image-key"}}' "$1" 2>/dev/null || true; }

# The venv's folder name, as roles/bento_service/tasks/release.yml names it: the sha256 of the
# set of pins (comments and blank lines dropped, Jinja's case-blind sort, joined by the two
# characters backslash and n, as that template writes it), 12 characters. If the two ever
# disagree, converge builds a second venv and the rolling deploy test, which counts them, fails.
venv_name=$(python3 - "$wheelhouse/requirements.txt" <<'PY'
import hashlib, re, sys
pins = sorted({re.sub("#.*$", "", line).strip() for line in open(sys.argv[1])} - {""}, key=str.lower)
print(hashlib.sha256("\\n".join(pins).encode()).hexdigest()[:12])
PY
)

build() {  # build TAG FROM SCRIPT: run SCRIPT in a container of FROM and commit it as TAG
  local tag=$1 from=$2 script=$3 ctr=bento-fleet-image-build
  podman rm -f "$ctr" >/dev/null 2>&1 || true
  podman run --name "$ctr" --volume "$wheelhouse:/srv/wheelhouse:ro" "$from" /bin/bash -euc "
    export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
    $script
    apt-get clean
    # Back-dated, as in the bare image: the roles' first apt task still updates the lists.
    touch -d @0 /var/lib/apt/lists /var/lib/apt/lists/*"
  podman commit --quiet --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL SIGRTMIN+3' \
    --change "LABEL bento-fleet.image-key=$key" "$ctr" "$tag" >/dev/null
  podman rm "$ctr" >/dev/null
  echo "molecule image: built $tag"
}
install() {  # install FULL LEAN: apt-get lines for two package lists (LEAN without recommends)
  echo "apt-get install -y -qq $1 >/dev/null"
  [ -z "$2" ] || echo "apt-get install -y -qq --no-install-recommends $2 >/dev/null"
}

for group in "${groups[@]}"; do
  podman tag "$bare" "localhost/bento-fleet-debian12-bare:$group"
done

fleet=localhost/bento-fleet-debian12-preloaded:fleet-base
if [ "$(label "$fleet")" != "$key" ]; then
  build "$fleet" "$bare" "apt-get update -qq; $(install "$preload_fleet" "$preload_fleet_lean")"
fi
for group in "${groups[@]}"; do
  tag=localhost/bento-fleet-debian12-preloaded:$group
  [ "$(label "$tag")" != "$key" ] || continue
  full=preload_$group lean=preload_${group}_lean
  script=$(install "${!full}" "${!lean}")
  from=$fleet
  if [ "$group" = acme ]; then from=$bare; script="apt-get update -qq; $script"; fi
  if [ "$group" = inference ]; then
    venv=/opt/bento-fleet/venvs/$venv_name
    script+="
    mkdir -p /opt/bento-fleet/venvs
    python3 -m venv $venv
    $venv/bin/pip install --quiet --no-cache-dir --no-index --find-links /srv/wheelhouse \
      -r /srv/wheelhouse/requirements.txt
    echo $venv_name > $venv/.complete"
  fi
  build "$tag" "$from" "$script"
done
podman image prune --force >/dev/null
