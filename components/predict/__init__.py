"""predict: batch scoring of an export (shadow mode) with the registry champion or a given model."""
