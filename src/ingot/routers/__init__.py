"""Routers: the traffic entry point of a service in an environment (see `base.Router`)."""

from ingot.routers.base import Address, HealthCheck, ReleaseStats, Router

__all__ = ["Address", "HealthCheck", "ReleaseStats", "Router"]
