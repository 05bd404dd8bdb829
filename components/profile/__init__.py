"""Params profiles: named overlays of params.yaml, applied through `dvc exp run -S` so DVC records them."""
