"""Run in a subprocess with KERAS_BACKEND set: train tiny candidates for one step, print a JSON summary."""

from __future__ import annotations

import json
import sys

import numpy as np


def main(distribution: str = "none", only: str = "paper_cnn,vit") -> None:
    import keras

    from components.common.params import AugmentParams, CandidateParams, RuntimeParams
    from components.lib.training import SplitArrays, train_candidate

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 4)
    x = rng.integers(0, 255, (16, 32, 32, 1)).astype(np.uint8)
    data = SplitArrays(x, y, x[:8], y[:8], pixel_mean=0.5, pixel_variance=0.08)
    runtime = RuntimeParams(distribution=distribution, loader_workers=1)
    losses, used = {}, {}
    for name, cand in {"paper_cnn": CandidateParams(filters=[4], dense_units=8),
                       "vit": CandidateParams(architecture="vit", patch_size=8, vit_dim=16, vit_depth=1, vit_heads=2)
                       }.items():
        if name not in only.split(","):
            continue
        cand = cand.model_copy(update={"epochs": 1, "batch_size": 16})
        augment = AugmentParams(rotation=0.05, zoom=0.1, contrast=0.2, flip=False)  # tests.tiny.MILD_AUGMENT
        result = train_candidate(name, cand, augment, data, 4, 0, [], verbose=0, runtime=runtime)
        losses[name] = result.history["loss"][0]
        used = result.runtime
    print(json.dumps({"backend": keras.backend.backend(), "losses": losses, "runtime": used}))


if __name__ == "__main__":
    main(*sys.argv[1:])
