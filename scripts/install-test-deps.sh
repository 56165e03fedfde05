#!/usr/bin/env bash
# Installs the real servers the test suite runs against, from Debian's archive. Idempotent.
set -euo pipefail
need=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
# The web page's test: a real browser, headless.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# The operator's age key pair in Molecule: backups are encrypted to it (postgresql_backup).
command -v age-keygen >/dev/null || need+=(age)
# The gateway's Retry-After rule, on the gateway role's package.
[ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -eq 0 ]; then
  echo "test deps: already installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "test deps: need root to install ${need[*]} (apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The tests start their own throwaway clusters; the packaged one is not needed.
systemctl disable --now postgresql >/dev/null 2>&1 || true
systemctl disable --now nginx >/dev/null 2>&1 || true  # the test starts its own
echo "test deps: installed ${need[*]}"
