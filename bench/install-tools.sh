#!/usr/bin/env bash
# The benchmarks' Debian tools, installed once: Postfix's smtp-sink test program for bench/send.py (the package is
# installed with "No configuration": the Postfix mail server itself is never configured or started) and wrk, the
# load generator bench/web.py uses beside httpx.
set -euo pipefail
missing=()
command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ] || missing+=(postfix)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
echo "installing Debian packages for the benchmarks: ${missing[*]}"
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
