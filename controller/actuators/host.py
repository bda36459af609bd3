"""Host-wide actuators: dropping the page cache (impacting: every process rereads from
disk afterwards; there is nothing to roll back to, so the policy keeps it a proposal)."""

from __future__ import annotations

from typing import Any, Literal

from controller.actuators.base import Actuator, Applied, Params, actuator
from controller.actuators.cgroup import _write


class DropCachesParams(Params):
    # 1: the page cache; 3: also dentries and inodes.
    what: Literal[1, 3] = 1


def cached_kb(meminfo: str) -> int | None:
    for line in meminfo.splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1])
    return None


@actuator
class DropPageCache(Actuator):
    name = "drop_page_cache"
    safety_class = "impacting"
    params_model = DropCachesParams

    def describe(self, p: DropCachesParams) -> str:
        return "drop the page cache" + (" and the dentry and inode caches" if p.what == 3 else "")

    def probe(self, p: DropCachesParams) -> dict[str, Any]:
        return {"cached_kb": cached_kb((self.env.proc_root / "meminfo").read_text())}

    def apply(self, p: DropCachesParams, before: dict[str, Any]) -> Applied:
        # Dirty pages are not dropped: the kernel writes them back first only if asked (sync).
        _write(self.env.proc_root / "sys" / "vm" / "drop_caches", str(p.what))
        return Applied(self.probe(p), None)
