"""Orchestrations of the stages in dvc.yaml for a cluster: Kubeflow Pipelines v2 (see kidney_ct.py)."""
