"""Batch evaluation on Ray Data, the upstream metric suites, and strategy comparison."""
