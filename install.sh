#!/usr/bin/env bash
# Sets vtr up on a fresh Debian/Ubuntu machine: ffmpeg (and Chromium, for the search page's browser
# test) from apt, then vtr and its test tools in a virtual environment, .venv, in this checkout.
# The system Python is never touched (PEP 668 forbids pip there on Debian 12 and Ubuntu 23.04+).
# Safe to rerun: every step that is already done is skipped.
#
# Usage: bash install.sh            then .venv/bin/vtr demo, or .venv/bin/python -m pytest -q
#        VTR_PYTHON=/path/python3 bash install.sh    to build .venv from another Python (>= 3.10)
set -euo pipefail
cd "$(dirname "$0")"

started=$SECONDS
step=""
fix=""
trap 'echo "install.sh: step \"$step\" failed after $((SECONDS - started)) s. $fix" >&2' ERR
say() { printf 'install.sh: %-44s %s\n' "$1" "$2"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
apt_updated=""
apt_install() {  # apt_install PACKAGE...: only the ones not installed yet
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    echo "install.sh: not a Debian/Ubuntu machine: install ${missing[*]} with your package manager, then rerun" >&2
    return 1
  fi
  if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

step="system packages (ffmpeg, chromium)"
fix="Run: sudo apt-get update && sudo apt-get install ffmpeg chromium python3-venv, then rerun"
t=$SECONDS
has_browser() { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }
if command -v ffmpeg >/dev/null && has_browser; then
  say "$step" "already there"
else
  if [ -n "$SUDO" ] && ! command -v sudo >/dev/null; then
    echo "install.sh: step \"$step\" needs root or sudo for apt-get. $fix" >&2
    exit 1
  fi
  command -v ffmpeg >/dev/null || apt_install ffmpeg
  # Only the search page's browser test needs Chromium, so a machine without it still gets vtr.
  # Ubuntu ships Chromium as a snap behind its chromium-browser package; Debian as chromium.
  if ! has_browser; then
    if command -v apt-get >/dev/null && apt-cache show chromium >/dev/null 2>&1; then browser=chromium
    else browser=chromium-browser; fi
    apt_install "$browser" || echo "install.sh: could not install $browser: vtr works, but the search page's" \
      "browser test will fail until Chromium is installed (sudo apt-get install $browser)" >&2
  fi
  say "$step" "installed in $((SECONDS - t)) s"
fi

step="Python for the virtual environment"
PY=${VTR_PYTHON:-python3}
fix="Install Python >= 3.10 (sudo apt-get install python3 python3-venv) or set VTR_PYTHON=/path/to/python3"
# A minimal Debian/Ubuntu image may have no python3 at all: the distribution's is the one to take.
if [ -z "${VTR_PYTHON:-}" ] && ! command -v python3 >/dev/null && command -v apt-get >/dev/null; then
  apt_install python3 python3-venv
  say "$step" "installed Debian's python3"
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "install.sh: $PY is missing or older than 3.10. $fix" >&2
  exit 1
fi
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

step="virtual environment .venv"
fix="Run: sudo apt-get install python3-venv python${pyver}-venv, then rerun"
t=$SECONDS
# The interpreter behind a Python, symlinks and pyenv's shims resolved: .venv is rebuilt when it was
# made from another one (say a pyenv build, and now VTR_PYTHON=/usr/bin/python3), or its base is gone.
base_of() { "$1" -c 'import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))' 2>/dev/null; }
want_base=$(base_of "$PY")
have_base=""
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import pip' 2>/dev/null; then have_base=$(base_of .venv/bin/python); fi
if [ -n "$have_base" ] && [ "$have_base" = "$want_base" ]; then
  say "$step" "already there ($(.venv/bin/python -V 2>&1), from $have_base)"
else
  [ -e .venv ] && say "$step" "rebuilding: made from ${have_base:-an interpreter that is gone}, not $want_base"
  # Debian and Ubuntu split venv's pip bootstrap (ensurepip) into python3-venv / python3.X-venv.
  if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then apt_install "python${pyver}-venv" || apt_install python3-venv; fi
  rm -rf .venv
  "$PY" -m venv .venv
  say "$step" "made from $want_base ($pyver) in $((SECONDS - t)) s"
fi

step="vtr and its test tools into .venv (pip)"
fix="Check the network reaches PyPI, then rerun; pip's message above names the package"
t=$SECONDS
# The stamp holds what pip was last given; unchanged inputs and an importable vtr skip pip (seconds).
# setup.cfg's [tool:...] sections (pytest's settings) are not pip's business, so they are left out.
stamp=.venv/.vtr-install
want=$({ awk '/^\[/ { skip = ($0 ~ /^\[tool:/) } !skip' setup.cfg; cat pyproject.toml constraints.txt; } | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import vtr' 2>/dev/null; then
  say "$step" "already there"
else
  # constraints.txt pins the versions the tests run against (see the comments there).
  .venv/bin/python -m pip install -q --upgrade "pip>=23"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
  say "$step" "installed in $((SECONDS - t)) s"
fi

step="check"
fix="Rerun bash install.sh; if it persists, remove .venv and rerun"
.venv/bin/vtr --help >/dev/null
say "done in $((SECONDS - started)) s" "now: .venv/bin/vtr demo   or   .venv/bin/python -m pytest -q"
