"""registry: list, promote and roll back versions of the registered model (alias `champion`)."""
