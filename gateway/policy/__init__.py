"""Policy engines: one interface (`PolicyEngine`), the embedded Rego engine behind it."""

from gateway.policy.engine import PolicyEngine
from gateway.policy.sources import PolicySources, load_sources

__all__ = ["PolicyEngine", "PolicySources", "load_sources"]
