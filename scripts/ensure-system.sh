#!/usr/bin/env bash
# Installs the Debian packages a profile needs, and only when one is missing, so
# `make test` sets up a fresh machine by itself and costs nothing on a warm one.
#   build: compilers and headers for probe_core, capsh for the privilege-drop tests,
#          chromium for the real-browser test of the workbench (JupyterLab), alertmanager
#          for the alerting tests (a real Alertmanager, started by the test), nats-server for
#          the bus tests (each starts its own, file-stored)
#   bench: the peers the benchmarks compare against
#   image: debootstrap, buildah and podman for `make image` and its test (no Docker daemon)
set -euo pipefail

case "${1:-build}" in
  build) pkgs=(g++ cmake ninja-build zlib1g-dev libcap2-bin iproute2 nftables prometheus-node-exporter prometheus-alertmanager chromium nats-server) ;;
  bench) pkgs=(prometheus-node-exporter) ;;
  image) pkgs=(debootstrap buildah podman runc uidmap) ;;
  *) echo "ensure-system: unknown profile '$1' (build, bench, image)" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-system: missing Debian packages: ${missing[*]}; install them as root" >&2
  exit 1
fi
echo "ensure-system: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
