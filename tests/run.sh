#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run it.
# Real tools (swaks, haproxy, openssl, promtool, fail2ban-regex...) come from Debian's packages; the tests
# that use them fail rather than skip when CI is set and they are missing.
set -eu
cd "$(dirname "$0")/.."

missing=""
# tool:Debian package (spfquery and opendkim-testmsg cross-check SPF/DKIM; ip and unshare run
# opendkim-testmsg in a network namespace with its own resolv.conf)
for pair in swaks:swaks haproxy:haproxy openssl:openssl spfquery:spf-tools-perl \
            opendkim-testmsg:opendkim-tools ip:iproute2 unshare:util-linux; do
  tool=${pair%%:*}
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing="$missing ${pair#*:}"
done
# promtool (checks the metrics exposition) comes with Debian's prometheus package,
# fail2ban-regex (checks examples/fail2ban against the server's log) with fail2ban; only
# their command-line tools are used, so without their recommended packages (swaks, above,
# needs its recommends: libnet-ssleay-perl for --tls).
bare=""
command -v promtool >/dev/null 2>&1 || bare="$bare prometheus"
command -v fail2ban-regex >/dev/null 2>&1 || bare="$bare fail2ban"
if [ -n "$missing$bare" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing:$missing$bare"
    apt-get update -qq
    if [ -n "$missing" ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
    if [ -n "$bare" ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $bare >/dev/null
    fi
  else
    echo "warning: cannot install$missing$bare (need root and apt-get); tests needing them will fail under CI" >&2
  fi
fi

python3 -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[test]'
exec python3 -m pytest -q -p no:cacheprovider "$@" tests
