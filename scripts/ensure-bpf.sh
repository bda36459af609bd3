#!/usr/bin/env bash
# Prepares this machine for the collector's eBPF path, and only what is missing:
#   - Debian's bcc (python3-bpfcc), exposed to the venv by a shim that adds `bcc` alone
#     (not the rest of /usr/lib/python3/dist-packages) to its path;
#   - kernel headers under /lib/modules/$(uname -r)/{build,source}: bcc compiles its C
#     against them. A real node mounts its own; a test VM whose kernel has no Debian
#     package gets Debian's current headers linked there. The programs use only
#     tracepoint arguments (read from the running kernel's tracefs), never struct
#     layouts from those headers, so a version mismatch cannot mis-read a field;
#   - tracefs (and debugfs) mounted.
# Usage: ensure-bpf.sh VENV_DIR. Needs root for the apt and mount steps.
set -euo pipefail
venv=${1:?usage: ensure-bpf.sh VENV_DIR}

need=()
dpkg-query -W -f='${Status}' python3-bpfcc 2>/dev/null | grep -q "install ok installed" || need+=(python3-bpfcc)
mods=/lib/modules/$(uname -r)
if [ ! -e "$mods/build/include" ]; then
  dpkg-query -W -f='${Status}' linux-headers-amd64 2>/dev/null | grep -q "install ok installed" || need+=(linux-headers-amd64)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-bpf: missing ${need[*]}; install them as root (the eBPF source falls back to files without them)" >&2
    exit 0
  fi
  echo "ensure-bpf: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -e "$mods/build/include" ] && [ "$(id -u)" -eq 0 ]; then
  build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$build" ] && [ -n "$common" ]; then
    mkdir -p "$mods"
    ln -sfn "$build" "$mods/build"
    ln -sfn "$common" "$mods/source"
    echo "ensure-bpf: linked $build as the headers of $(uname -r)"
  fi
fi

if [ "$(id -u)" -eq 0 ]; then
  [ -d /sys/kernel/tracing/events ] || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
  [ -d /sys/kernel/debug/tracing ] || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
fi

# The shim: a directory holding only a `bcc` link, put on the venv's path by a .pth file.
bcc_dir=$(/usr/bin/python3 -c 'import bcc, os; print(os.path.dirname(bcc.__file__))' 2>/dev/null || true)
if [ -n "$bcc_dir" ]; then
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$site/incidentlab_bcc_shim"
  ln -sfn "$bcc_dir" "$site/incidentlab_bcc_shim/bcc"
  echo "$site/incidentlab_bcc_shim" > "$site/incidentlab_bcc_shim.pth"
fi
