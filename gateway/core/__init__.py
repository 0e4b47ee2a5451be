"""The pure core: errors, decisions and verdicts, the tool call, canonical encodings."""
