#!/usr/bin/env bash
# Everything vtr needs on a fresh Debian/Ubuntu machine: ffmpeg and the Python package.
# Safe to rerun: installed pieces are skipped. Usage: bash install.sh
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v ffmpeg >/dev/null; then
  echo "installing ffmpeg (Debian package)..."
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi

# constraints.txt pins the versions the tests run against (torch 2.14.1 + torchvision 0.29.1: clip
# imports torchvision, and setuptools<82 because clip imports pkg_resources).
python3 -m pip install -q -c constraints.txt -e ".[test]"
