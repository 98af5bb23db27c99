"""Helpers for tests, demos and benchmarks: tiny random models and golden-fixture rebuilding."""
