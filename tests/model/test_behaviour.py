"""Model behaviour: direction (a dense focus pushes toward Stone), invariance, and better than chance.

The phantom model is the default's recipe (the compact CNN with max pooling and a cosine schedule, through
`train_candidate`) trained on
kidney-centred crops of generated phantom slices (a whole 512x512 slice is too little signal for a
from-scratch CNN trained for seconds), then probed on patients it never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from components.common.imaging import LoadedImage, decode_image, prepare_for_model
from components.common.params import AugmentParams, CandidateParams, GenerateParams
from components.generate.core import patient_anatomy
from components.generate.phantom import Grid, draw_slice, reconstruct
from components.lib.prepared import pixel_statistics
from components.lib.training import SplitArrays, train_candidate

pytestmark = pytest.mark.slow

CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]
SIZE, CROP, SLICES = 64, 64, 2
SETTINGS = GenerateParams(seed=11, patients_per_class=40, slices_per_patient=SLICES, matrix=256)
GRID = Grid.square(SETTINGS.matrix)
TRAIN, VAL, TEST = range(0, 28), range(28, 32), range(32, 40)  # selection (early stopping) never sees TEST
REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "kidney-ct"
_PREPROCESS = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())["preprocess"]
WINDOW = (_PREPROCESS["window_center"], _PREPROCESS["window_width"])


def kidney_crop(hu: np.ndarray, anatomy, which: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A CROP x CROP window of `hu` centred on kidney `which`, and that centre in crop coordinates."""
    kidney = anatomy.kidneys[which]
    cx = int(np.argmin(np.abs(GRID.x[0] - kidney.cx)))
    cy = int(np.argmin(np.abs(GRID.y[:, 0] - kidney.cy)))
    top, left = max(0, cy - CROP // 2), max(0, cx - CROP // 2)
    return hu[top: top + CROP, left: left + CROP], (cy - top, cx - left)


def phantom_crops(label: str, patients) -> list[tuple[np.ndarray, tuple[int, int]]]:
    crops = []
    for p in patients:
        anatomy = patient_anatomy(SETTINGS, label, p)
        which = anatomy.lesion.kidney if anatomy.lesion is not None else p % 2
        for z in range(SLICES):
            hu = reconstruct(draw_slice(anatomy, z, GRID).hu, anatomy, GRID.spacing, np.random.default_rng([p, z]))
            crops.append(kidney_crop(hu, anatomy, which))
    return crops


def model_input(hu: np.ndarray) -> np.ndarray:
    """The crop as the pipeline prepares a DICOM slice: the default's HU window (params.yaml)."""
    return prepare_for_model(LoadedImage(hu, "dicom", "int16"), SIZE, *WINDOW)


def arrays(patients) -> tuple[np.ndarray, np.ndarray]:
    x = [model_input(hu) for label in CLASSES for hu, _ in phantom_crops(label, patients)]
    y = [k for k, label in enumerate(CLASSES) for _ in range(len(patients) * SLICES)]
    return np.array(x)[..., None], np.array(y)


def fit(x, y, x_val, y_val, epochs: int, seed: int = 0):
    data = SplitArrays(x, y, x_val, y_val, *pixel_statistics(x))
    candidate = CandidateParams(architecture="compact_cnn", filters=[8, 16, 32], global_pooling="max",
                                batchnorm_momentum=0.9, dense_units=32, dropout=0.1, learning_rate=0.003,
                                lr_schedule="cosine", epochs=epochs, batch_size=32, patience=epochs)
    result = train_candidate("behaviour", candidate, AugmentParams(rotation=0.02, zoom=0.05, contrast=0.1, flip=False), data,
                             len(CLASSES), seed=seed, callbacks=[], verbose=0)
    return lambda batch: np.asarray(result.model.predict(np.asarray(batch, "float32"), verbose=0))


@pytest.fixture(scope="module")
def phantom_model():
    x, y = arrays(TRAIN)
    x_val, y_val = arrays(VAL)
    x_test, y_test = arrays(TEST)
    return fit(x, y, x_val, y_val, epochs=25), x_test, y_test


def test_beats_chance_on_unseen_phantom_patients(phantom_model):
    predict, x_test, y_test = phantom_model
    accuracy = float(np.mean(predict(x_test).argmax(axis=1) == y_test))
    assert accuracy >= 0.7, f"accuracy {accuracy:.2f} on unseen phantom patients (chance 0.25)"


def test_dense_focus_in_a_kidney_moves_prediction_toward_stone(phantom_model):
    predict = phantom_model[0]
    stone = CLASSES.index("Stone")
    before, after = [], []
    for hu, (cy, cx) in phantom_crops("Normal", TEST):
        planted = hu.copy()
        yy, xx = np.ogrid[: hu.shape[0], : hu.shape[1]]
        planted[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 1200.0  # a ~4 mm calcification at the kidney centre
        before.append(model_input(hu))
        after.append(model_input(planted))
    p_before = predict(np.array(before)[..., None])[:, stone]
    p_after = predict(np.array(after)[..., None])[:, stone]
    assert np.mean(p_after > p_before) >= 0.75, (p_before.round(2), p_after.round(2))
    assert p_after.mean() > p_before.mean() + 0.1


def test_predictions_stable_under_small_rotation_and_contrast(phantom_model):
    from scipy.ndimage import rotate

    predict, x_test, _ = phantom_model
    base = predict(x_test).argmax(axis=1)
    turned = np.array([rotate(img[..., 0], 5, reshape=False, order=1, mode="nearest") for img in x_test])[..., None]
    mean = x_test.mean(axis=(1, 2, 3), keepdims=True)
    contrasted = np.clip((x_test.astype(float) - mean) * 1.1 + mean, 0, 255)
    assert np.mean(predict(turned).argmax(axis=1) == base) >= 0.85
    assert np.mean(predict(contrasted).argmax(axis=1) == base) >= 0.85


def test_real_model_beats_chance_on_held_out_series():
    """Trained on real slices, tested on near-duplicate groups (scan series) it never saw."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (a fresh clone has no ../shared): skipping")
    from components.lib.grouping import assign_groups
    from components.preprocess.split import split_by_group

    files = sorted(REAL_DATA.glob("*/*.jpg"))[::3]  # every third slice keeps it a couple of minutes
    labels = [f.parent.name for f in files]
    loaded = [decode_image(f.read_bytes()) for f in files]
    x = np.array([prepare_for_model(img, SIZE, 40, 400) for img in loaded])[..., None]
    thumbs = np.array([prepare_for_model(img, 32, 40, 400) for img in loaded], dtype=np.float32)
    groups = assign_groups([""] * len(files), thumbs, threshold=0.92)
    splits = np.array(split_by_group(labels, groups, test_fraction=0.25, val_fraction=0.2, seed=3))
    y = np.array([sorted(set(labels)).index(label) for label in labels])
    # Two training seeds, probabilities averaged: one 8-epoch draw of this weak model can land on the majority class
    # (seed 0 did after a float-level change to batch normalisation, while seeds 1 and 2 scored 0.55-0.60).
    predicts = [fit(x[splits == "train"], y[splits == "train"], x[splits == "val"], y[splits == "val"], epochs=8,
                    seed=seed) for seed in (0, 1)]
    y_test = y[splits == "test"]
    predicted = np.mean([predict(x[splits == "test"]) for predict in predicts], axis=0).argmax(axis=1)
    accuracy = float(np.mean(predicted == y_test))
    majority = float(np.max(np.bincount(y_test)) / len(y_test))
    assert accuracy > max(0.25, majority) + 0.05, f"accuracy {accuracy:.2f}, majority-class rate {majority:.2f}"
