"""CLI: python -m components.explain IMAGE --out overlay.png — Grad-CAM of one PNG/JPEG/DICOM slice.

The champion is resolved from the registry by the same helpers the package stage uses (common/registry.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from components.common.champion import resolve_champion
from components.common.cli import StageError, log, run_stage, stage_parser
from components.common.gradcam import GradCamError
from components.common.imaging import ImageDecodeError, decode_image, prepare_for_model
from components.common.params import Params
from components.common.registry import connect_mlflow, existing_registry_uri, load_registered_keras, mlflow_alias_lookup
from components.explain.core import explain_pixels


def run(params: Params, args: argparse.Namespace) -> None:
    image = Path(args.image)
    if not image.is_file():
        raise StageError(f"{image} not found")
    uri = existing_registry_uri(params)
    connect_mlflow(uri)
    champion = resolve_champion(mlflow_alias_lookup(uri), params.register.model_name)
    try:
        pixels = prepare_for_model(decode_image(image.read_bytes()), champion.image_size, champion.window_center,
                                   champion.window_width, champion.body_crop)
    except ImageDecodeError as exc:
        raise StageError(f"cannot read {image}: {exc}") from None
    model = load_registered_keras(champion.model_uri)
    try:
        result = explain_pixels(model, pixels, list(champion.classes))
    except (GradCamError, ValueError) as exc:
        raise StageError(f"cannot explain with {champion.model_uri}: {exc}") from None
    from PIL import Image

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.overlay, mode="RGB").save(out)
    shares = ", ".join(f"{c} {p:.1%}" for c, p in sorted(result.probabilities.items(), key=lambda kv: -kv[1]))
    log.info("%s: %s (%s) with %s v%s; overlay written to %s — decision support only", image.name, result.label,
             shares, champion.model_name, champion.version, out)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Grad-CAM overlay of one CT slice (PNG, JPEG or DICOM) with the registry's champion.")
    parser.add_argument("image", help="a PNG, JPEG or DICOM slice")
    parser.add_argument("--out", default="overlay.png", help="where to write the overlay PNG (default overlay.png)")
    return run_stage("explain", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
