"""Strategies as pure planners: (current state, target, options) -> Plan."""

from ingot.plan.blue_green import apply_to_state, plan_blue_green
from ingot.plan.model import Plan, ServiceState, Step, Target


def plan_for(strategy: str, state: ServiceState, target: Target) -> Plan:
    # Canary and rolling arrive with progressive delivery; operations refuse them before planning.
    if strategy != "blue-green":
        raise ValueError(f"no planner for strategy {strategy!r}")
    return plan_blue_green(state, target)


__all__ = ["Plan", "ServiceState", "Step", "Target", "apply_to_state", "plan_blue_green", "plan_for"]
