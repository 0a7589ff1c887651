#!/usr/bin/env bash
# Installs the project's dependencies from the lock file, Chromium for the browser app's test
# (Debian's package), and makes a WebGPU adapter available to Node (Dawn through the `webgpu`
# package). Idempotent: a machine that already has Chromium and an adapter (a real GPU, or
# lavapipe installed earlier) skips the system steps entirely.
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

# Root for apt-get: ourselves, or sudo.
SUDO=""
need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      say "need root (or sudo) to install $1"; exit 1
    fi
  fi
}

# The browser app's end-to-end test (test/browser) drives Chromium headless; its SwiftShader
# adapter runs WebGPU on the CPU, so no GPU is needed. Skipped when Chromium is already there.
CHROMIUM="${KILN_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  say "Chromium found: $CHROMIUM"
elif command -v apt-get >/dev/null 2>&1 && [ -r /etc/os-release ] && grep -q '^ID=debian' /etc/os-release; then
  say "installing Debian's chromium (for the browser app's test)"
  need_root chromium
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
else
  say "cannot install Chromium automatically: this is not Debian."
  say "install Chromium (or Chrome) and set KILN_CHROMIUM to its executable, then run this script again."
  exit 1
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
need_root mesa-vulkan-drivers
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
