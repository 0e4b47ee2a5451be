"""Upstream APIs: which headers go out, and the pooled client that sends a planned call."""
