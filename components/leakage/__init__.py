"""leakage: what the same recipe scores on a random image-level split, and grouped k-fold CV."""
