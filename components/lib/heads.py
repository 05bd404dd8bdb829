"""The frozen-backbone head: a class-balanced logistic regression on cached features (train, leakage, the bench).

C is picked by macro-F1 on the grouped validation split, then the head is refitted on train + validation.
The standardisation is folded into the weights, so the head is one Dense softmax layer of the saved model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import f1_score

from components.common.cli import log
from components.common.folded_lr import fit_folded


@dataclass
class Head:
    """Dense-layer weights (features -> logits) and how C was chosen."""

    kernel: np.ndarray             # (D, K)
    bias: np.ndarray               # (K,)
    c: float
    val_macro_f1: dict[float, float] = field(default_factory=dict)  # per C tried; empty without validation
    train_macro_f1: dict[float, float] = field(default_factory=dict)  # per C tried (the final fit's if one)
    seconds: float = 0.0           # time the fit took (every C tried and the refit)


def fit_with_c(features: np.ndarray, labels: np.ndarray, n_classes: int, c: float,
         seed: int, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Standardise, fit, and fold the standardisation into (kernel, bias) over all `n_classes` (float32).

    Classes are balanced; with `weights` (per slice, e.g. components.lib.feeders.loss_weights, which balance
    classes themselves) those weights are used instead."""
    kernel, bias = fit_folded(features, labels, n_classes, c, seed, weights)
    return kernel.astype("float32"), bias.astype("float32")


def head_probabilities(head: Head, features: np.ndarray) -> np.ndarray:
    """Softmax of the head's logits: what the saved model's `probabilities` layer outputs."""
    logits = np.asarray(features, dtype="float64") @ head.kernel + head.bias
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype("float32")


def fit_head(f_train: np.ndarray, y_train: np.ndarray, f_val: np.ndarray, y_val: np.ndarray, n_classes: int,
             cs: list[float], seed: int = 0, groups: tuple[np.ndarray, np.ndarray] | None = None) -> Head:
    """Pick C by validation macro-F1 (ties: the smaller C), then refit on train + validation with it.

    With `groups` (the scan series of the train and of the validation rows) each slice is weighted by
    components.lib.feeders.loss_weights' class_and_group (classes balanced, and within a class a long series does
    not outvote short ones); without, classes are balanced."""
    def weigh(labels: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
        if groups is None:
            return None
        from components.lib.feeders import loss_weights

        return loss_weights(labels, n_classes, "class_and_group", np.concatenate(groups)[rows])

    scores: dict[float, float] = {}
    fitted: dict[float, float] = {}
    if len(y_val) and len(cs) > 1:
        for c in cs:
            head = Head(*fit_with_c(f_train, y_train, n_classes, c, seed,
                                    weigh(y_train, np.arange(len(y_train)))), c)
            scores[c] = _macro_f1(head, f_val, y_val, n_classes)
            fitted[c] = _macro_f1(head, f_train, y_train, n_classes)
    best = max(sorted(cs), key=lambda c: scores.get(c, 0.0))
    f_all, y_all = np.concatenate([f_train, f_val]), np.concatenate([y_train, y_val])
    head = Head(*fit_with_c(f_all, y_all, n_classes, best, seed, weigh(y_all, np.arange(len(y_all)))), best, scores)
    head.train_macro_f1 = fitted or {best: _macro_f1(head, f_all, y_all, n_classes)}
    return head


def _macro_f1(head: Head, features: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    predicted = head_probabilities(head, features).argmax(axis=1)
    return float(f1_score(labels, predicted, labels=list(range(n_classes)), average="macro", zero_division=0))


def is_frozen_backbone(candidate) -> bool:
    """A ct_resnet152 candidate whose backbone stays frozen: its head is fitted on the cached features."""
    return candidate.architecture == "ct_resnet152" and candidate.trainable == "frozen"


def fit_frozen_head(candidate, f_train: np.ndarray, y_train: np.ndarray, f_val: np.ndarray, y_val: np.ndarray,
                    n_classes: int, seed: int) -> Head:
    """A frozen-backbone candidate's fit on its cached features, as train and leakage both run it: `fit_head` with
    the candidate's `head_c` choices, its time kept in `seconds`, the choice logged."""
    began = time.perf_counter()
    head = fit_head(f_train, y_train, f_val, y_val, n_classes, list(candidate.head_c), seed)
    head.seconds = time.perf_counter() - began
    log.info("head: C %g picked by validation macro-F1 %s, fitted in %.1f s", head.c,
             {c: round(f, 3) for c, f in head.val_macro_f1.items()}, head.seconds)
    return head
