"""The OCI image `make image` builds, run under podman as the DaemonSet runs it: the host's
/proc and /sys read-only at /host/..., tracefs, the kernel modules and headers, hostPID and
host networking, every capability dropped but the DaemonSet's, a read-only root, the
collector's ConfigMap as its settings. Its one sample must use the same path for each
source as the collector on the host does, and see the host's processes.

The image is built by scripts/build-image.sh (reused when it already holds this tree);
everything the run takes from the manifests is read from them, so a manifest that stops
matching the image fails here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "deploy" / "kubernetes" / "base"
IMAGE = "localhost/incidentlab:test"

pytestmark = [pytest.mark.slow, pytest.mark.root]

# podman on a host whose cgroups are a v1/v2 hybrid needs runc (crun refuses hybrids), and
# limits within this host's own hard ones (podman's defaults are higher).
PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096"]


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None and os.geteuid() != 0:
        pytest.skip("podman is not installed and cannot be as non-root")
    subprocess.run(
        ["scripts/build-image.sh", IMAGE],
        cwd=ROOT,
        env=dict(os.environ, IMAGE_REUSE="1", VENV=str(Path(sys.executable).parents[1])),
        check=True,
        timeout=1800,
    )
    return IMAGE


def collector_container() -> dict[str, Any]:
    ds = yaml.safe_load((BASE / "collector-daemonset.yaml").read_text())
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    return {"pod": spec, "container": c}


def podman_args(tmp_path: Path) -> list[str]:
    """The DaemonSet's pod and container, as podman flags."""
    d = collector_container()
    pod, c = d["pod"], d["container"]
    sc = c["securityContext"]
    args = ["--rm", *LIMITS]
    limits = c["resources"]["limits"]  # what the kubelet would enforce, the loader child included
    args += [
        "--memory",
        str(limits["memory"]).replace("Mi", "m"),
        "--memory-swap",
        str(limits["memory"]).replace("Mi", "m"),
    ]
    args += ["--cpus", str(int(str(limits["cpu"]).rstrip("m")) / 1000)]
    if pod.get("hostPID"):
        args += ["--pid", "host"]
    if pod.get("hostNetwork"):
        args += ["--network", "host"]
    args += ["--user", str(sc["runAsUser"])]
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    args += ["--cap-drop", "all"]
    args += [f"--cap-add={cap}" for cap in sc["capabilities"]["add"]]
    if sc.get("seccompProfile", {}).get("type") == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    config = yaml.safe_load((BASE / "collector-config.yaml").read_text())["data"]["collector.yaml"]
    (tmp_path / "collector.yaml").write_text(config)
    for m in c["volumeMounts"]:
        v = volumes[m["name"]]
        ro = ":ro" if m.get("readOnly") else ""
        if "hostPath" in v:
            host = v["hostPath"]["path"]
            if host == "/var/lib/incidentlab":  # the spool: the test's own, not this host's
                host = str(tmp_path / "spool")
                Path(host).mkdir()
            if not Path(host).exists():
                continue  # DirectoryOrCreate on a host without it
            args += ["-v", f"{host}:{m['mountPath']}{ro}"]
        elif "configMap" in v:
            args += ["-v", f"{tmp_path / 'collector.yaml'}:{m['mountPath']}{ro}"]
        elif "emptyDir" in v:
            size = str(v["emptyDir"].get("sizeLimit", "64Mi")).replace("Mi", "m")
            args += ["--tmpfs", f"{m['mountPath']}:size={size}"]
        # Secrets (the token, the CA) are for shipping, which one sample does not do.
    args += ["-e", "INCIDENTLAB_COLLECTOR_HOST_ID=node-under-test"]
    return args


def sources(snapshot: dict[str, Any]) -> dict[str, str]:
    return {name: entry["path"] for name, entry in snapshot["sources"].items()}


def test_the_collector_image_sees_the_host_as_the_daemonset_mounts_it(image: str, tmp_path: Path) -> None:
    c = collector_container()["container"]
    cmd = [*PODMAN, "run", *podman_args(tmp_path), image, *c["command"][:1], "sample", "--once", "--json"]
    cmd += ["--config", "/etc/incidentlab/collector.yaml"]
    inside = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert inside.returncode == 0, inside.stderr[-2000:]
    boxed = json.loads(inside.stdout.splitlines()[-1])
    host = json.loads(
        subprocess.run(
            [str(Path(sys.executable).with_name("incidentlab-collector")), "sample", "--once", "--json"],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout.splitlines()[-1]
    )
    paths, expected = sources(boxed), sources(host)
    assert paths == expected, {
        k: (paths.get(k), expected.get(k)) for k in expected if paths.get(k) != expected.get(k)
    }
    assert paths["ebpf"] == "kernel" and paths["processes"] == "kernel"  # what the capabilities are for
    # hostPID: the host's processes, not the container's one.
    seen = boxed["sources"]["processes"]["data"]["totals"]["processes"]
    there = host["sources"]["processes"]["data"]["totals"]["processes"]
    assert abs(seen - there) <= max(20, there // 10)


def test_the_image_runs_the_controller_as_non_root(image: str) -> None:
    out = subprocess.run(
        [
            *PODMAN,
            "run",
            "--rm",
            *LIMITS,
            image,
            "sh",
            "-c",
            "id -u; incidentlab-controller --help | head -1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    uid, usage = out.stdout.splitlines()[:2]
    assert uid == "10001" and "incidentlab-controller" in usage
    dep = yaml.safe_load((BASE / "controller-deployment.yaml").read_text())
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)
