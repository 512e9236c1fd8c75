#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: the Debian
# tools the tests drive (only the ones missing, so a warm machine skips apt),
# then damselfly itself with its native extension and the test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package
declare -A tools=(
  [ip]=iproute2 [tc]=iproute2 [curl]=curl [mount]=mount
  # the lab's baselines: a central HTTP server and BitTorrent with a tracker
  [nginx]=nginx [aria2c]=aria2 [opentracker]=opentracker
  # the registry mirror's end-to-end test: a real registry and a real client
  [docker-registry]=docker-registry [skopeo]=skopeo
  # the proxy's CONNECT test: an https client and a certificate for its server
  [openssl]=openssl
)
missing=()
for cmd in "${!tools[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${tools[$cmd]}")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to apt-get install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u)
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
python3 -c 'import native; print("damselfly native extension:", "on" if native.NATIVE else "OFF (fallback)")'
