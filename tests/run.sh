#!/usr/bin/env bash
# The README's test command: install everything the test suite needs on a
# fresh Debian machine, then run it.
#
# - Real tools (swaks, haproxy, openssl, promtool, fail2ban-regex...) come
#   from Debian's packages; the tests that use them fail rather than skip
#   when CI is set and they are missing.
# - Python packages go into a virtual environment, never into the system
#   Python (Debian 12 refuses that: externally-managed-environment): the
#   active one if you have activated one, else ./.venv, created here.
#   Debian ships venv's pip bootstrap separately (python3-venv), installed
#   here when we run as root and it is missing.
# - Arguments are passed to pytest (e.g. tests/test_examples.py -k haproxy).
set -eu
cd "$(dirname "$0")/.."

as_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }
apt_updated=""
apt_install() {  # apt_install [--no-install-recommends] PACKAGE...
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

missing=""
# tool:Debian package (spfquery and opendkim-testmsg cross-check SPF/DKIM; ip and unshare run
# opendkim-testmsg in a network namespace with its own resolv.conf; nc.openbsd -N is a client
# that half-closes; curl is the XOAUTH2 client: no released swaks has XOAUTH2)
for pair in swaks:swaks haproxy:haproxy openssl:openssl spfquery:spf-tools-perl \
            opendkim-testmsg:opendkim-tools ip:iproute2 unshare:util-linux nc.openbsd:netcat-openbsd curl:curl; do
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
  if as_root; then
    echo "installing:$missing$bare"
    if [ -n "$missing" ]; then
      apt_install $missing
    fi
    if [ -n "$bare" ]; then
      apt_install --no-install-recommends $bare
    fi
  else
    echo "warning: cannot install$missing$bare (need root and apt-get); tests needing them will fail under CI" >&2
  fi
fi

if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  py="$VIRTUAL_ENV/bin/python"
else
  py=.venv/bin/python
  if ! "$py" -m pip --version >/dev/null 2>&1; then
    rm -rf .venv
    if ! python3 -m venv .venv >/dev/null 2>&1; then
      rm -rf .venv
      if as_root; then
        echo "installing: python3-venv"
        apt_install python3-venv
      fi
      python3 -m venv .venv  # with its own error message if it still cannot
    fi
  fi
fi

"$py" -m pip install -q --disable-pip-version-check -e '.[test]'
exec "$py" -m pytest -q -p no:cacheprovider "$@" tests
