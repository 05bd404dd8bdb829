"""evaluate: test-split metrics, plots and the gate verdict for every candidate."""
