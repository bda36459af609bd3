"""The actuators the executor may run, in a registry by name (see base.py)."""

from controller.actuators import cgroup, command, host, kube, process
from controller.actuators.base import (
    ACTUATORS,
    SAFETY_CLASSES,
    Actuator,
    ActuatorError,
    Applied,
    HostEnv,
    KubeTarget,
    SafetyClass,
    get,
    host_env,
)

__all__ = [
    "ACTUATORS",
    "SAFETY_CLASSES",
    "Actuator",
    "ActuatorError",
    "Applied",
    "HostEnv",
    "KubeTarget",
    "SafetyClass",
    "cgroup",
    "command",
    "get",
    "host",
    "host_env",
    "kube",
    "process",
]
