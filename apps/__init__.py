"""Thin wiring: the processes a user starts (CLI, broker, workers). No business logic here."""
