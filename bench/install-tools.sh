#!/usr/bin/env bash
# The benchmarks' Debian tools, installed once: Postfix's smtp-sink test program for bench/send.py (the package is
# installed with "No configuration": the Postfix mail server itself is never configured or started) and wrk, the
# load generator bench/web.py uses beside httpx. bench/daemons.py starts a throwaway PostgreSQL cluster of its own
# (tests/pg_cluster.py): it needs initdb, not a running server, so Debian's package is told not to create one.
set -euo pipefail
missing=()
command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ] || missing+=(postfix)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
echo "installing Debian packages for the benchmarks: ${missing[*]}"
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
if [[ " ${missing[*]} " == *" postgresql "* ]]; then
    $SUDO mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confold "${missing[@]}" \
    >/dev/null
