#!/usr/bin/env bash
# bench/send.py sends to Postfix's smtp-sink test program. Install the Debian package once, with
# "No configuration": the Postfix mail server itself is never configured or started.
set -euo pipefail
if command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
echo "installing Debian's postfix package for its smtp-sink test program (the mail server is not started)"
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null
