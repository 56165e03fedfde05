#!/usr/bin/env bash
# Builds the Molecule instance image from Debian's archive (no registry needed): a minimal
# bookworm with systemd as PID 1 and what Ansible needs to manage it.
set -euo pipefail
IMAGE=${1:-localhost/bento-fleet-debian12:latest}
root=$(mktemp -d /var/tmp/molecule-rootfs.XXXXXX)
trap 'rm -rf "$root" "$root.tar"' EXIT

mmdebstrap --variant=minbase --quiet \
  --include=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,iproute2,procps,ca-certificates,gnupg,iputils-ping \
  --customize-hook='chroot "$1" systemctl mask systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket getty@tty1.service console-getty.service systemd-logind.service' \
  --skip=cleanup/apt/lists \
  --customize-hook='touch -d @0 "$1"/var/lib/apt/lists "$1"/var/lib/apt/lists/*' \
  bookworm "$root.tar"
# Back-dated apt lists: roles' `cache_valid_time` must not skip the first `apt-get update`.
podman import --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL SIGRTMIN+3' "$root.tar" "$IMAGE" >/dev/null
echo "molecule image: built $IMAGE"
