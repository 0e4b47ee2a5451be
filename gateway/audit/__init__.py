"""The audit log: sinks, and the records every call writes."""
