#!/usr/bin/env bash
# Installs the system packages siprox builds and tests with, when they are missing.
# Sourced by deploy/dev.sh and tests/run.sh; it never removes or upgrades anything.
# Usage: ensure_deps PKG...

ensure_deps() {
  local missing=()
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo"
    else
      echo "siprox needs these packages: ${missing[*]}" >&2
      echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "siprox needs these packages (Debian names): ${missing[*]}; no apt-get here, install them by hand" >&2
    return 1
  fi
  echo "installing missing packages: ${missing[*]}" >&2
  $sudo apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
}
