"""Shared machinery with no domain knowledge: pages, cache, security, metrics, services."""
