"""Workflow roles, one module each, found through one registry (roles.base.ROLES by artifact kind).

Importing this package registers them all."""

from __future__ import annotations

from controller.workflow.roles import analyzer, executor, memory, observer, planner, policy_gate, verifier  # noqa: F401
from controller.workflow.roles.base import ROLES, NotReady, Posture, StageContext, role_for

__all__ = ["ROLES", "NotReady", "Posture", "StageContext", "role_for"]
