"""Shared ML building blocks that several stages use (metrics, splits, folds, models, heads, features, runs).

A module here imports only components.common and components.lib; a stage imports only components.common,
components.lib and its own folder (tests/unit/test_layers.py checks both; docs/development.md#layers).
"""
