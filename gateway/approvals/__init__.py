"""The approval queue: its rules, the service approvers use, the executor, notifications."""
