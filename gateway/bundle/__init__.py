"""The bundle: tool specs, routes, compiled schemas and policies under one revision."""
