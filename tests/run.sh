#!/usr/bin/env bash
# The README's test command: install everything the test suite needs on a
# fresh Debian machine, then run it.
#
# - Real tools (swaks, haproxy, openssl, promtool, fail2ban-regex...) come
#   from Debian's packages; the tests that use them fail rather than skip
#   under CI (CI=true; CI=false, 0, no, off or empty is not CI) and they are missing.
# - Python packages go into a virtual environment, never into the system
#   Python (Debian 12 refuses that: externally-managed-environment): the
#   active one if you have activated one, else ./.venv, created here.
#   Debian ships venv's pip bootstrap separately (python3-venv), installed
#   here when we run as root and it is missing.
# - Arguments are passed to pytest, in both passes: a path runs that alone
#   (e.g. tests/test_examples.py -k haproxy); without one, tests/ runs
#   (pyproject.toml's testpaths).
# pipefail: the copy of the checkout for the mypyc pass is a tar pipe; a failing creating tar
# (an unreadable file) would otherwise leave a copy short of it, and go unnoticed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The builds to test (see below), checked before anything is installed: a typo
# would otherwise run no pass at all and exit 0.
builds=",${TXSMTPSRV_TEST_BUILDS:-pure,mypyc},"
case $builds in ,pure,|,mypyc,|,pure,mypyc,|,mypyc,pure,) ;;
  *) echo "TXSMTPSRV_TEST_BUILDS=${TXSMTPSRV_TEST_BUILDS:-}: name pure, mypyc or pure,mypyc" >&2; exit 2;;
esac

# Under CI: CI set to anything but a way of saying no (empty, 0, false, no, off, any case),
# as tests/_support.py's under_ci reads it (CI systems set true, 1 or their own name).
under_ci() {
  local value=${CI:-}
  value=${value#"${value%%[![:space:]]*}"}  # leading and trailing white space only, as str.strip()
  value=${value%"${value##*[![:space:]]}"}
  case ${value,,} in ""|0|false|no|off) return 1;; esac
}
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
  py="$PWD/.venv/bin/python"  # absolute: the mypyc pass runs from a copy of the checkout
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

# Two builds, each pass told which one it must be testing (tests/test_build.py):
# - pure: the checkout itself, as installed above (the default build);
# - mypyc: the dialogue's modules compiled (setup.py, TXSMTPSRV_MYPYC=1), a wheel
#   built from a copy of the checkout and unpacked in that copy, so that no compiled
#   module ever lands in the checkout (it would shadow edits of the .py files).
# TXSMTPSRV_TEST_BUILDS=pure (or mypyc) runs one pass only (checked at the top); CI runs both.
status=0
case $builds in *,pure,*)
  echo "== the pure-Python build"
  TXSMTPSRV_EXPECT_BUILD=pure "$py" -m pytest -q -p no:cacheprovider "$@" || status=$?
  # pytest's 2 (interrupted: Ctrl-C) and 4 (bad arguments): no second suite, build and all.
  case $status in 2|4) exit $status;; esac
esac
case $builds in *,mypyc,*)
  echo "== the mypyc build"
  has_headers() {
    "$py" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
  }
  if ! command -v gcc >/dev/null 2>&1 || ! has_headers; then
    if as_root; then
      echo "installing: gcc libc6-dev python3-dev"
      apt_install gcc libc6-dev python3-dev
    fi
  fi
  if ! command -v gcc >/dev/null 2>&1 || ! has_headers; then
    echo "cannot test the mypyc build: it needs gcc and Python's headers (Debian: gcc python3-dev)" >&2
    if under_ci; then status=1; fi
  else
    tree=$(mktemp -d "${TMPDIR:-/tmp}/txsmtpsrv-mypyc.XXXXXX")
    trap 'rm -rf "$tree"' EXIT
    tar -cf - --exclude=./.git --exclude=./.venv --exclude=./.wheel --exclude=./build --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=./.hypothesis --exclude=./.mypy_cache . | tar -xf - -C "$tree"
    TXSMTPSRV_MYPYC=1 "$py" -m pip wheel -q --no-deps --disable-pip-version-check "$tree" -w "$tree/.wheel"
    "$py" - "$tree" <<'EOF_UNPACK'
import glob, sys, zipfile
tree = sys.argv[1]
(wheel,) = glob.glob(f"{tree}/.wheel/txsmtpsrv-*.whl")
with zipfile.ZipFile(wheel) as z:  # the package with its compiled modules; not the metadata
    z.extractall(tree, [n for n in z.namelist() if ".dist-info/" not in n])
EOF_UNPACK
    (cd "$tree" && TXSMTPSRV_EXPECT_BUILD=mypyc PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}" \
        "$py" -m pytest -q -p no:cacheprovider "$@") || status=$?
  fi
esac
exit $status
