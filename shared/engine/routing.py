"""Class routing: the nearest class prototype by cosine distance of global embeddings; an image too
far from every prototype belongs to no class of the model ('unknown')."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass
class RouteDecision:
    nearest: int  # index of the nearest class
    distance: float  # cosine distance to its prototype
    confidence: float  # margin to the next option (another class or 'unknown'), 0..1
    unknown: bool


class Router:
    """Nearest prototype by cosine distance; too far from every prototype is 'unknown'."""

    def __init__(self, prototypes: np.ndarray, unknown_thresholds: np.ndarray) -> None:
        self.prototypes = l2_normalise(prototypes)
        self.unknown_thresholds = np.asarray(unknown_thresholds, dtype=np.float32)

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        return (1.0 - l2_normalise(embeddings) @ self.prototypes.T).astype(np.float32)

    def route(self, embeddings: np.ndarray) -> list[RouteDecision]:
        distances = self.distances(embeddings)
        decisions = []
        for row in distances:
            order = np.argsort(row)
            nearest = int(order[0])
            d1 = float(row[nearest])
            # The competitor is the next class or the class's 'unknown' boundary, whichever is nearer.
            competitor = float(self.unknown_thresholds[nearest])
            if len(order) > 1:
                competitor = min(competitor, float(row[order[1]]))
            confidence = float(np.clip((competitor - d1) / max(competitor, 1e-9), 0.0, 1.0))
            decisions.append(RouteDecision(nearest, d1, confidence, d1 > self.unknown_thresholds[nearest]))
        return decisions
