"""The admin API on its own port: health, metrics, approvals, kill switches, OpenAPI."""
