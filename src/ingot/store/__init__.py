"""ingot's state store (SQLite by default)."""

from ingot.store.repo import ActivationRow, DeploymentRow, InstanceRow, ReleaseRow, StepRow, Store

__all__ = ["ActivationRow", "DeploymentRow", "InstanceRow", "ReleaseRow", "StepRow", "Store"]
