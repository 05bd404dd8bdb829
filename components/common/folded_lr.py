"""A class-balanced multinomial logistic regression whose input standardisation is folded into its weights.

One piece for the two heads that are such a model: the frozen-backbone head on slice features
(`components.lib.heads`) and the series head on per-series statistics (`components.common.study_model`). The result
is a (kernel, bias) pair a Dense softmax layer or a matrix product applies to the raw inputs.
"""

from __future__ import annotations

import numpy as np

ABSENT_LOGIT = -30.0  # bias of a class the training data lacks: the model never predicts it


def fit_folded(features: np.ndarray, labels: np.ndarray, n_classes: int, c: float, seed: int,
               weights: np.ndarray | None = None, max_iter: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Standardise, fit, and fold the standardisation into (kernel (D, K), bias (K,)) over all `n_classes`.

    Classes are balanced; with `weights` (per row, balancing classes themselves) those weights are used instead.
    A class absent from `labels` gets ABSENT_LOGIT."""
    from sklearn.linear_model import LogisticRegression

    mean, std = features.mean(axis=0), features.std(axis=0)
    std[std == 0] = 1.0
    model = LogisticRegression(C=c, class_weight=None if weights is not None else "balanced", max_iter=max_iter,
                               random_state=seed)
    model.fit((features - mean) / std, labels, sample_weight=weights)
    kernel, bias = np.zeros((features.shape[1], n_classes)), np.full(n_classes, ABSENT_LOGIT)
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # sklearn keeps one row for two classes: logits (-z/2, z/2) give the same softmax
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    for row, cls in enumerate(model.classes_):
        kernel[:, cls] = coef[row] / std
        bias[cls] = intercept[row] - float(np.sum(coef[row] * mean / std))
    return kernel, bias
