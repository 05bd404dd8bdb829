"""Validate stage: image table from the manifest, checked by a Great Expectations suite."""
