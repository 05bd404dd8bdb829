"""Helpers shared by every stage: typed params, object storage, image IO, logging."""
