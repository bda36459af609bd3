#!/usr/bin/env bash
# make image: one OCI image with both entry points (incidentlab-collector, incidentlab-controller),
# built without a Docker daemon: Debian's buildah over a rootfs that debootstrap makes from
# Debian packages. Two stages, each a buildah image in the local containers storage:
#   base  Debian bookworm (minbase), python3, bcc (python3-bpfcc: the eBPF loader child compiles
#         with it), CA certificates; reused while this script's package list is the same
#   app   a venv over the base's Python (--system-site-packages: it sees Debian's bcc) with this
#         checkout's wheel (probe_core built in) and its dependencies, the notebooks the
#         postmortems run, and a non-root user (10001) for the controller; the collector runs as
#         root because its kernel paths need capabilities (the DaemonSet adds them)
# Usage: scripts/build-image.sh [IMAGE]   (default localhost/incidentlab:<version>)
# IMAGE_REUSE=1 skips the app stage when IMAGE already holds this checkout's tree.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | awk 'NR == 1')
image=${1:-localhost/incidentlab:$version}
venv=${VENV:-.venv}
extras="postgres,s3,kube,gpu,workbench"
base_pkgs="python3,python3-venv,python3-bpfcc,ca-certificates"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export BUILDAH_ISOLATION=chroot
export STORAGE_DRIVER=${STORAGE_DRIVER:-overlay}

scripts/ensure-system.sh image

# What the image is made of: the tracked tree and any changes to it, so a reused image is
# never an older checkout's.
tree=$( { git ls-files -s; git diff HEAD; } | sha256sum | cut -c1-16)
if [ "${IMAGE_REUSE:-0}" = 1 ] && [ "$(buildah inspect --type image --format '{{index .ImageAnnotations "dev.incidentlab.tree"}}' "$image" 2>/dev/null || true)" = "$tree" ]; then
  echo "build-image: $image already holds this tree ($tree)"
  exit 0
fi

work=build/image
rm -rf "$work"
mkdir -p "$work"
cleanup() {
  for c in "${containers[@]:-}"; do [ -n "$c" ] && buildah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work/rootfs"
}
containers=()
trap cleanup EXIT

# --- base ----------------------------------------------------------------------------------
base=localhost/incidentlab-base:$(echo "bookworm $base_pkgs 1" | sha256sum | cut -c1-12)
if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  echo "build-image: debootstrap bookworm ($base_pkgs)"
  debootstrap --variant=minbase --include="$base_pkgs" bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  # What a running image does not need: apt's caches and lists, documentation.
  rm -rf "$work"/rootfs/var/cache/apt/* "$work"/rootfs/var/lib/apt/lists/* \
    "$work"/rootfs/usr/share/doc/* "$work"/rootfs/usr/share/man/* "$work"/rootfs/usr/share/info/*
  ctr=$(buildah from scratch)
  containers+=("$ctr")
  mnt=$(buildah mount "$ctr")
  tar -C "$work/rootfs" -cf - . | tar -C "$mnt" -xpf -
  buildah umount "$ctr" >/dev/null
  buildah commit -q "$ctr" "$base" >/dev/null
  rm -rf "$work/rootfs"
  echo "build-image: base $base"
fi

# --- app -----------------------------------------------------------------------------------
echo "build-image: wheels (this checkout, probe_core compiled, and [$extras])"
# Resolved for the image's Python (Debian's 3.11.2), not this venv's: scripts/image-constraints.txt
# holds back what needs a newer 3.11.
"$venv/bin/python" -m pip wheel -q --wheel-dir "$work/wheels" --constraint scripts/image-constraints.txt \
  ".[$extras]" >"$work/wheels.log" 2>&1 \
  || { tail -20 "$work/wheels.log" >&2; exit 1; }

# Nothing of this shell's environment (pip's settings among it) reaches the image's commands.
in_image() { chroot "$mnt" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
ctr=$(buildah from "$base")
containers+=("$ctr")
mnt=$(buildah mount "$ctr")
# probe_core was compiled on this host: it runs in the image only if the image's glibc is
# at least this host's (both are bookworm here). Refuse, with why, rather than ship an image
# whose collector fails to import it.
# awk reads all of ldd's output: `head -1` would leave ldd writing into a closed pipe
# (SIGPIPE, exit 141 under pipefail) now and then.
host_glibc=$(ldd --version | awk 'NR == 1 {print $NF}')
image_glibc=$(in_image ldd --version | awk 'NR == 1 {print $NF}')
if [ "$(printf '%s\n%s\n' "$host_glibc" "$image_glibc" | sort -V | tail -1)" != "$image_glibc" ]; then
  echo "build-image: this host's glibc $host_glibc is newer than the image's $image_glibc; build on Debian bookworm" >&2
  exit 1
fi
cp -r "$work/wheels" "$mnt/tmp/wheels"
in_image python3 -m venv --system-site-packages /opt/incidentlab
in_image /opt/incidentlab/bin/pip install -q --no-index --no-cache-dir --find-links /tmp/wheels \
  "incidentlab[$extras]"
# The postmortem notebooks, where pipelines/report.py looks for them (beside its package).
site=$(in_image /opt/incidentlab/bin/python -c 'import pipelines, os; print(os.path.dirname(os.path.dirname(pipelines.__file__)))')
mkdir -p "$mnt$site/notebooks"
cp notebooks/*.ipynb notebooks/sanitize.cfg "$mnt$site/notebooks/"
rm -rf "$mnt/tmp/wheels"
find "$mnt/opt/incidentlab" -name '__pycache__' -prune -exec rm -rf {} +
in_image /opt/incidentlab/bin/python -m compileall -q /opt/incidentlab >/dev/null || true
in_image groupadd --system -K SYS_GID_MAX=10001 --gid 10001 incidentlab
in_image useradd --system -K SYS_UID_MAX=10001 --uid 10001 --gid 10001 --home-dir /var/lib/incidentlab --no-create-home incidentlab
mkdir -p "$mnt/var/lib/incidentlab" "$mnt/etc/incidentlab"
in_image chown 10001:10001 /var/lib/incidentlab
buildah umount "$ctr" >/dev/null

buildah config \
  --env PATH=/opt/incidentlab/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env PYTHONDONTWRITEBYTECODE=1 \
  --workingdir /var/lib/incidentlab \
  --user 10001:10001 \
  --entrypoint '[]' \
  --cmd '["incidentlab-controller", "serve"]' \
  --port 8443/tcp --port 9143/tcp \
  --label org.opencontainers.image.title=incidentlab \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$(git rev-parse HEAD)" \
  --annotation "dev.incidentlab.tree=$tree" \
  "$ctr"
previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
buildah commit -q "$ctr" "$image" >/dev/null
# The image this tag held before, now untagged: a gigabyte each, not kept.
[ -n "$previous" ] && buildah rmi "$previous" >/dev/null 2>&1 || true
size=$(podman image inspect --format '{{.Size}}' "$image" 2>/dev/null || echo 0)
echo "build-image: $image, $((size / 1000000)) MB; push it with: buildah push $image docker://REGISTRY/incidentlab:$version"
