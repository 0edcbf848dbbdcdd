#!/bin/sh
# Install the toolchains of the benchmark's non-Python peers (bench/_peers.py) and of the
# smtp-source load generator (bench/bench.py --client smtp-source), from Debian packages:
#
#   golang-go + golang-github-emersion-go-smtp-dev + golang-github-emersion-go-sasl-dev
#       -> the go-smtp sink (bench/peers/go_sink/), built offline on first use
#   postfix
#       -> /usr/sbin/smtp-source (load generator) and /usr/sbin/smtp-sink (C reference sink)
#   nodejs + npm
#       -> the Node smtp-server sink (bench/peers/node_sink.js); the smtp-server package itself
#          is fetched from npm on first use into ~/.cache/txsmtpsrv-bench/node, not here
#
# Benchmarks are not tests: tests/run.sh does NOT run this.  Run it once, as root:
#     sh bench/install-peers.sh
#
# Postfix: only its two stand-alone test programs are wanted, never a mail daemon.  The
# debconf answer "No configuration" installs no main.cf, so the package sets up no MTA; the
# daemon is then stopped and disabled in case the machine's init started it anyway, and the
# script checks that nothing listens on port 25 afterwards (a daemon on :25 would surprise
# the tests and anything else on the machine).  smtp-source and smtp-sink need no running
# Postfix and no main.cf.
set -eu

export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update
apt-get install -y --no-install-recommends \
    golang-go golang-github-emersion-go-smtp-dev golang-github-emersion-go-sasl-dev postfix
# Node: Debian's nodejs + npm unless a Node with npm is already there (a NodeSource nodejs
# ships its own npm and conflicts with Debian's npm package).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends nodejs npm
fi

# No Postfix daemon, whatever the init system did.
if command -v postfix >/dev/null 2>&1 && postfix status >/dev/null 2>&1; then
    postfix stop || true
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now postfix.service >/dev/null 2>&1 || true
elif command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d postfix disable >/dev/null 2>&1 || true
fi
if command -v ss >/dev/null 2>&1 && ss -Hltn 'sport = :25' | grep -q .; then
    echo "warning: something still listens on port 25:" >&2
    ss -ltnp 'sport = :25' >&2
fi

for tool in go node npm /usr/sbin/smtp-source /usr/sbin/smtp-sink; do
    command -v "$tool" >/dev/null 2>&1 || { echo "missing after install: $tool" >&2; exit 1; }
done
echo "bench peers' toolchains installed: $(go version), node $(node --version), postfix $(postconf -d mail_version 2>/dev/null | sed 's/.*= //')"
