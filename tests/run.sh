#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run it.
# Real tools (swaks, haproxy, openssl) come from Debian's packages; the tests
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
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "warning: cannot install$missing (need root and apt-get); tests needing them will fail under CI" >&2
  fi
fi

python3 -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[test]'
exec python3 -m pytest -q -p no:cacheprovider "$@" tests
