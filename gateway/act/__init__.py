"""Carrying out a verdict: forward, hold, answer from a held call, replay, report, refuse."""
