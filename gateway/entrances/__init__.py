"""Entrances: each turns a request of its protocol into a `ToolCall` for the pipeline."""
