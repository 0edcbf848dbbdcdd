"""
The benchmark's non-Python peers and Postfix's test programs: find, install, build.

- ``node``: Nodemailer's ``smtp-server`` (pinned to L{NODE_SMTP_SERVER}) installed with
  ``npm`` on first use into a cache directory outside the repository
  (``~/.cache/txsmtpsrv-bench/node/smtp-server-VERSION``; ``$TXSMTPSRV_BENCH_CACHE``
  moves the cache), run by ``node bench/peers/node_sink.js``.
- ``go-smtp``: ``bench/peers/go_sink/main.go`` built offline from Debian's
  ``golang-go``, ``golang-github-emersion-go-smtp-dev`` and
  ``golang-github-emersion-go-sasl-dev`` (``GO111MODULE=off``, ``GOPATH=/usr/share/gocode``,
  ``GOPROXY=off``, no cgo); the binary is cached under a name that hashes the source, the Go
  version and go-smtp's package version, so an edit or an upgrade rebuilds it.
- ``smtp-sink`` and ``smtp-source``: Postfix's stand-alone test programs (Debian package
  ``postfix``; no Postfix daemon is needed or wanted).

A missing toolchain raises L{Unavailable} with a one-line note (what to install), which the
benchmark prints instead of the peer's figures.  ``sh bench/install-peers.sh`` installs all of
them.  Tools are looked up on ``$PATH`` plus Postfix's sbin directories, or only on
``$TXSMTPSRV_BENCH_PATH`` when that is set (to try another Node or Go, or none).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from typing import Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS_DIR = os.path.join(HERE, "peers")
NODE_SINK = os.path.join(PEERS_DIR, "node_sink.js")
GO_SINK_DIR = os.path.join(PEERS_DIR, "go_sink")

#: The smtp-server release measured (its init() is patched by node_sink.js: keep them in step).
NODE_SMTP_SERVER = "3.21.6"
GOPATH = "/usr/share/gocode"
GO_PACKAGES = ("golang-github-emersion-go-smtp-dev", "golang-github-emersion-go-sasl-dev")
POSTFIX_DIRS = ("/usr/sbin", "/usr/lib/postfix/sbin")
INSTALL_HINT = "sh bench/install-peers.sh"


class Unavailable(Exception):
    """The toolchain of a peer is missing or could not build it; the message says why."""


def which(name: str) -> str | None:
    """A tool's path: on C{$TXSMTPSRV_BENCH_PATH} if set, else on C{$PATH} and Postfix's dirs."""
    path = os.environ.get("TXSMTPSRV_BENCH_PATH")
    if path is None:
        path = os.pathsep.join([os.environ.get("PATH", os.defpath), *POSTFIX_DIRS])
    return shutil.which(name, path=path)


def cache_dir() -> str:
    """Where installed/built peers live (outside the repository, never committed)."""
    base = os.environ.get("TXSMTPSRV_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "txsmtpsrv-bench"
    )
    os.makedirs(base, exist_ok=True)
    return base


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One installer/builder at a time (two benchmarks may start together)."""
    path = os.path.join(cache_dir(), f".{name}.lock")
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
         timeout: float = 300) -> str:
    """Run a build/install step; L{Unavailable} with its last output lines if it fails."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise Unavailable(f"{' '.join(argv[:3])} ... failed ({proc.returncode}): {tail}")
    return proc.stdout


def debian_version(package: str) -> str | None:
    """The installed version of a Debian package, or None."""
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", package],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = proc.stdout.split()
    if proc.returncode != 0 or "installed" not in words[:3] or len(words) < 4:
        return None
    return words[-1]


# ---------------------------------------------------------------- Node smtp-server


def node_sink() -> tuple[list[str], dict[str, str]]:
    """
    The command and extra environment that run the Node sink; installs smtp-server first
    if needed.

    @raise Unavailable: no node/npm, or npm could not install the pinned smtp-server.
    """
    node = which("node")
    if node is None:
        raise Unavailable(f"node not found (Debian: nodejs, npm; {INSTALL_HINT})")
    prefix = os.path.join(cache_dir(), "node", f"smtp-server-{NODE_SMTP_SERVER}")
    modules = os.path.join(prefix, "node_modules")
    manifest = os.path.join(modules, "smtp-server", "package.json")
    with _locked("node"):
        if not os.path.exists(manifest):
            npm = which("npm")
            if npm is None:
                raise Unavailable(f"npm not found, cannot install smtp-server ({INSTALL_HINT})")
            os.makedirs(prefix, exist_ok=True)
            _run([npm, "install", "--prefix", prefix, "--no-audit", "--no-fund", "--no-save",
                  "--no-package-lock", "--omit=dev", f"smtp-server@{NODE_SMTP_SERVER}"],
                 cwd=prefix, timeout=600,
                 env={**os.environ, "PATH": os.pathsep.join([os.path.dirname(node),
                                                             os.environ.get("PATH", os.defpath)])})
        try:
            with open(manifest) as f:
                installed = json.load(f).get("version")
        except (OSError, ValueError) as exc:
            raise Unavailable(f"smtp-server install is broken: {exc}") from exc
    if installed != NODE_SMTP_SERVER:
        raise Unavailable(f"smtp-server {installed} in {prefix}, expected {NODE_SMTP_SERVER}")
    return [node, NODE_SINK], {"NODE_PATH": modules}


# ---------------------------------------------------------------- go-smtp


def _go_env(gocache: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOPATH=GOPATH, GO111MODULE="off", GOPROXY="off", GOFLAGS="", CGO_ENABLED="0",
               GOCACHE=gocache, GOTOOLCHAIN="local")
    return env


def go_sink() -> list[str]:
    """
    The command that runs the go-smtp sink; builds it (offline) first if needed.

    @raise Unavailable: no Go compiler, go-smtp/go-sasl sources missing, or the build failed.
    """
    go = which("go")
    if go is None:
        raise Unavailable(f"go not found (Debian: golang-go; {INSTALL_HINT})")
    env_path = os.pathsep.join([os.path.dirname(go), os.environ.get("PATH", os.defpath)])
    versions = {pkg: debian_version(pkg) for pkg in GO_PACKAGES}
    for pkg, sub in zip(GO_PACKAGES, ("go-smtp", "go-sasl")):
        if not os.path.isdir(os.path.join(GOPATH, "src", "github.com", "emersion", sub)):
            raise Unavailable(f"{sub} sources not in {GOPATH} (Debian: {pkg}; {INSTALL_HINT})")
    smtp_version = (versions[GO_PACKAGES[0]] or "unknown").split("-")[0]
    base = os.path.join(cache_dir(), "go")
    os.makedirs(base, exist_ok=True)
    env = _go_env(os.path.join(base, "gocache"))
    env["PATH"] = env_path
    go_version = _run([go, "version"], env=env, timeout=60).strip()
    digest = hashlib.sha256()
    for name in sorted(os.listdir(GO_SINK_DIR)):
        if name.endswith(".go"):
            with open(os.path.join(GO_SINK_DIR, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    digest.update(json.dumps([go_version, versions], sort_keys=True).encode())
    binary = os.path.join(base, f"go_sink-{digest.hexdigest()[:16]}")
    with _locked("go"):
        if not os.path.exists(binary):
            fd, tmp = tempfile.mkstemp(prefix=".go_sink-", dir=base)
            os.close(fd)
            try:
                sources = sorted(os.path.join(GO_SINK_DIR, n) for n in os.listdir(GO_SINK_DIR)
                                 if n.endswith(".go"))
                _run([go, "build", "-trimpath", "-ldflags", f"-X main.libVersion={smtp_version}",
                      "-o", tmp, *sources], env=env, cwd=GO_SINK_DIR, timeout=600)
                os.chmod(tmp, 0o755)
                os.replace(tmp, binary)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    return [binary]


# ---------------------------------------------------------------- Postfix test programs


def postfix_tool(name: str) -> str:
    """
    The path of ``smtp-sink`` or ``smtp-source``.

    @raise Unavailable: Postfix is not installed.
    """
    found = which(name)
    if found:
        return found
    raise Unavailable(f"{name} not found (Debian: postfix; {INSTALL_HINT})")


def postfix_version() -> str:
    """Postfix's version for the report (the test programs have no --version)."""
    return (debian_version("postfix") or "unknown").split("-")[0].split("+")[0]
