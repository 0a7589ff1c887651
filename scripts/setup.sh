#!/usr/bin/env bash
# Makes a WebGPU adapter available to Node (Dawn through the `webgpu` package), then installs the
# project's dependencies from the lock file. Idempotent: a machine that already has an adapter
# (a real GPU, or lavapipe installed earlier) skips the system step entirely.
#
# Dawn accepts Mesa's lavapipe (a Vulkan driver on the CPU) only from Mesa 25, which Debian 12
# ("bookworm") ships in bookworm-backports. Other systems: install a Vulkan driver for your GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

say() { printf 'setup: %s\n' "$*" >&2; }

if [ ! -d node_modules/webgpu ] || [ ! -d node_modules/.bin ]; then
  say "installing npm dependencies from package-lock.json"
  npm ci --no-audit --no-fund
fi

probe() { node scripts/probe-adapter.mjs >/dev/null 2>&1; }

if probe; then
  say "WebGPU adapter found: $(node scripts/probe-adapter.mjs 2>/dev/null)"
  exit 0
fi

say "no WebGPU adapter; installing Mesa's lavapipe Vulkan driver from bookworm-backports"
if ! command -v apt-get >/dev/null 2>&1 || [ ! -r /etc/os-release ] || ! grep -q 'VERSION_CODENAME=bookworm' /etc/os-release; then
  say "cannot install automatically: this is not Debian 12 (bookworm)."
  say "install a Vulkan driver (Mesa >= 25 lavapipe, or your GPU's driver) and run this script again."
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    say "need root (or sudo) to install mesa-vulkan-drivers"; exit 1
  fi
fi
src=/etc/apt/sources.list.d/kiln-bookworm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  # Reuse the machine's own mirror for the main archive (first deb822 stanza or sources.list line).
  uri=""
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || { say "cannot find the machine's Debian mirror in apt sources"; exit 1; }
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" | $SUDO tee "$src" >/dev/null
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers >/dev/null

if probe; then
  say "WebGPU adapter found: $(node scripts/probe-adapter.mjs 2>/dev/null)"
else
  say "lavapipe was installed but Dawn still reports no adapter; details:"
  node scripts/probe-adapter.mjs || true
  exit 1
fi
