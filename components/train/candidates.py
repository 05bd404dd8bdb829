"""The study's six candidates at small epoch counts: the block commented out in params.yaml, as data."""

from __future__ import annotations

from components.common.params import CandidateParams

_SHARED = {"weights": "none", "epochs": 3, "batch_size": 16, "patience": 2}
STUDY_CANDIDATES: dict[str, dict] = {
    "paper_cnn": {"architecture": "paper_cnn", "filters": [16, 32, 64, 128], "dense_units": 128, "dropout": 0.5,
                  "learning_rate": 0.001, "epochs": 12, "batch_size": 16, "patience": 4},
    "efficientnet_b0": {"architecture": "efficientnet_b0", "dropout": 0.2, "learning_rate": 0.001, **_SHARED},
    "mobilenet_v2": {"architecture": "mobilenet_v2", "width": 0.5, "dropout": 0.2, "learning_rate": 0.001, **_SHARED},
    "resnet50": {"architecture": "resnet50", "dropout": 0.2, "learning_rate": 0.0005, **_SHARED},
    "inception_v3": {"architecture": "inception_v3", "dropout": 0.2, "learning_rate": 0.0005, **_SHARED},
    "vit": {"architecture": "vit", "patch_size": 12, "vit_dim": 64, "vit_depth": 4, "vit_heads": 4, "dropout": 0.1,
            "learning_rate": 0.0005, **{k: v for k, v in _SHARED.items() if k != "weights"}},
}


def study_candidates(epochs: int | None = None, batch_size: int | None = None) -> dict[str, CandidateParams]:
    """All six candidates, optionally with every epoch count / batch size overridden (benchmarks, tests)."""
    overrides = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size}.items() if v is not None}
    return {name: CandidateParams(**{**raw, **overrides}) for name, raw in STUDY_CANDIDATES.items()}
