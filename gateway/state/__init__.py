"""Call state kept across requests: idempotency keys, run budgets, kill switches."""
