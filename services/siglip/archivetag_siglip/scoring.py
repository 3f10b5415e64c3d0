"""SigLIP scores for exclusive view types (numpy only).

    logit  = exp(logit_scale) * cos(image, class) + logit_bias
    p_soft = softmax(logits)  over the classes: which view is it (the bias cancels)
    p_sig  = sigmoid(logits)  per class: does this description fit at all

"unknown" is never a class with a constant score: it is the answer only when the top
class is ambiguous (p_soft under a relative threshold) or fits nothing (p_sig under an
absolute one). Negative or close cosines are normal for SigLIP and mean nothing by themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from archivetag.runtime.model_service import ViewTypeResult

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Thresholds:
    unknown: float = 0.4  # top softmax probability under this -> unknown
    min_match: float = 0.0  # top sigmoid probability under this -> unknown


def normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def logits_for(image_embeddings: np.ndarray, class_embeddings: np.ndarray, logit_scale: float,
               logit_bias: float) -> np.ndarray:
    """(N, C) logits; both inputs are normalised here, logit_scale is the model's (log) parameter."""
    cosines = normalize(image_embeddings).astype(np.float64) @ normalize(class_embeddings).astype(np.float64).T
    return cosines * np.exp(logit_scale) + logit_bias


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # no overflow for large negative logits


def view_types(image_embeddings: np.ndarray, class_embeddings: np.ndarray, classes: list[str],
               logit_scale: float, logit_bias: float, thresholds: Thresholds,
               with_embedding: bool = True) -> list[ViewTypeResult]:
    """One ViewTypeResult per image: top class or unknown, every class's probability and logit."""
    embeddings = normalize(image_embeddings)
    logits = logits_for(embeddings, class_embeddings, logit_scale, logit_bias)
    probabilities = softmax(logits)
    matches = sigmoid(logits)
    results = []
    for row, (logit_row, prob_row, match_row) in enumerate(zip(logits, probabilities, matches)):
        order = np.argsort(-prob_row, kind="stable")
        top = int(order[0])
        confidence = float(prob_row[top])
        ambiguous = confidence < thresholds.unknown
        fits_nothing = float(match_row[top]) < thresholds.min_match
        results.append(ViewTypeResult(
            view_type=UNKNOWN if ambiguous or fits_nothing else classes[top],
            confidence=confidence,
            scores=[(classes[i], float(prob_row[i]), float(logit_row[i])) for i in order],
            embedding=embeddings[row].tolist() if with_embedding else [],
        ))
    return results


def label_scores(image_embedding: np.ndarray, label_embeddings: np.ndarray, names: list[str], logit_scale: float,
                 logit_bias: float) -> list[tuple[str, float, float]]:
    """(name, sigmoid probability, logit) per label for one image, most probable first. Labels are
    independent (sigmoid, not softmax): what SigLIP's zero-shot pipeline and logits_per_image give."""
    logits = logits_for(np.asarray(image_embedding)[None], label_embeddings, logit_scale, logit_bias)[0]
    probabilities = sigmoid(logits)
    order = np.argsort(-logits, kind="stable")
    return [(names[i], float(probabilities[i]), float(logits[i])) for i in order]
