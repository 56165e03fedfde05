# The Debian packages each group's instance image carries already, so that converge installs
# nothing it downloads and unpacks anew on every run. A cache, not a requirement: the roles
# still install every one of these themselves (a package missing here is only slower), and
# `make molecule-bare` converges the same scenario from the bare image to prove it.
# Sourced by images.sh; the lists follow the roles' vars for Debian 12 and molecule/default.
# *_lean lists install without recommends, as the roles install them.

# Every fleet host: common, firewall and the node exporter (monitoring).
preload_fleet="ca-certificates curl gnupg rsync less openssh-server sudo unattended-upgrades systemd-timesyncd ufw"
preload_fleet_lean="prometheus-node-exporter"

preload_gateways="nginx python3-cryptography certbot"
preload_gateways_lean="prometheus-nginx-exporter"
# bento_service, and the PostgreSQL client molecule/default's prepare gives them.
preload_inference="python3 python3-venv python3-pip xz-utils curl postgresql-client"
preload_inference_lean=""
# python3-cryptography (community.crypto, the postgresql role's CA) must be here, as on gateways:
# Mitogen's interpreter, started before a role installs it, does not import it afterwards.
preload_databases="postgresql-15 postgresql-client python3-psycopg2 python3-cryptography acl"
preload_databases_lean="prometheus-postgres-exporter"
preload_monitoring=""
preload_monitoring_lean="prometheus prometheus-alertmanager"
# fleet-acme, the outside world: pebble and the client tools of molecule/shared/acme.yml and prepare.
preload_acme="pebble python3-cryptography curl openssl netcat-openbsd openssh-client postgresql-client"
preload_acme_lean=""
