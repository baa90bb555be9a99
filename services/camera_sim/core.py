"""What the camera simulator will send: its options, the samples to draw from, the frame-by-frame plan.

Plain logic, no Kafka and no clock: the publisher in ``service.py`` walks the plan. A plan is a
deterministic function of the samples, the counts and the seed, so tests and benchmarks can replay it.
Option values it cannot use are a ``ConfigError`` (a usage error of ``lineguard camera-sim``).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ConfigError
from shared.synthetic import DEFECT_TYPES, SYNTHETIC_CLASSES

NORMAL = "normal"
DEFECT = "defect"

# Bad frames the simulator can inject; each must end up on the scorer's dead-letter topic.
BAD_KINDS: tuple[str, ...] = (
    "corrupt_bytes",  # a valid Frame whose image bytes are noise
    "truncated_image",  # a valid Frame whose JPEG/PNG is cut in half
    "wrong_schema",  # a valid message of another schema on the frames topic
    "oversized_dimensions",  # a PNG header (and Frame fields) declaring a huge image
    "undecodable",  # bytes that are not msgpack at all
)

IMAGE_SUFFIXES = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
}


@dataclass(frozen=True)
class SampleSpec:
    """One image the simulator can send: from a dataset file or rendered synthetically."""

    product: str
    label: str  # NORMAL | DEFECT
    defect_type: str | None  # e.g. "scratch"; None for normal samples
    path: Path | None = None  # dataset file, or None for a synthetic sample
    seed: int = 0  # synthetic samples: seed of the render


@dataclass(frozen=True)
class PlannedFrame:
    seq: int
    frame_id: str
    camera_id: str
    sample_index: int
    bad_kind: str | None  # one of BAD_KINDS, or None for a good frame


@dataclass
class SimOptions:
    data: Path | None = None  # MVTec-layout folder; None: synthetic
    products: Sequence[str] = ()  # synthetic products; empty: all
    defect_rate: float = 0.3
    pool: int = 48
    size: int = 224
    rate: float = 5.0  # frames per second per camera
    count: int | None = 100  # None: until stopped
    cameras: int = 1
    bad_rate: float = 0.0
    bad_kinds: Sequence[str] = ()
    truth: Path | None = None
    deadline_ms: int | None = None
    hint: bool = False
    seed: int = 0
    run_id: str | None = None
    # Synthetic renders as a plant's camera sends them: scaled up to frame_size (width, height) with
    # sensor noise, encoded as jpeg (at jpeg_quality), png or raw8 (mono8, 1 byte a pixel).
    frame_size: tuple[int, int] | None = None
    encoding: str = "jpeg"
    jpeg_quality: int = 92


@dataclass
class SimStats:
    sent: int = 0
    bad: int = 0
    max_behind_s: float = 0.0  # how far the sender fell behind its clock
    started: float = 0.0
    finished: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The run in figures, as its ``camera_sim_finished`` line gives them."""
        return {
            "sent": self.sent,
            "bad": self.bad,
            "bad_by_kind": self.by_kind,
            "seconds": round(self.finished - self.started, 3),
            "max_behind_s": round(self.max_behind_s, 4),
        }


def load_samples(options: SimOptions) -> list[SampleSpec]:
    """The dataset's test images, or a pool of synthetic samples of the chosen products."""
    if options.data is not None:
        return scan_mvtec(options.data)
    products = list(options.products) or list(SYNTHETIC_CLASSES)
    unknown = set(products) - set(SYNTHETIC_CLASSES)
    if unknown:
        raise ConfigError(f"unknown synthetic products {sorted(unknown)}; choose from {SYNTHETIC_CLASSES}")
    return synthetic_samples(products, DEFECT_TYPES, options.pool, options.defect_rate, options.seed)


def scan_mvtec(root: Path) -> list[SampleSpec]:
    """Test images of an MVTec-layout folder: ``root`` is one class folder or a folder of classes."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    class_dirs = (
        [root] if (root / "test").is_dir() else sorted(p for p in root.iterdir() if (p / "test").is_dir())
    )
    if not class_dirs:
        raise FileNotFoundError(f"{root} has no test/ folder and no class folders with one (MVTec layout)")
    samples: list[SampleSpec] = []
    for class_dir in class_dirs:
        for type_dir in sorted(p for p in (class_dir / "test").iterdir() if p.is_dir()):
            normal = type_dir.name == "good"
            for path in sorted(type_dir.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    samples.append(
                        SampleSpec(
                            product=class_dir.name,
                            label=NORMAL if normal else DEFECT,
                            defect_type=None if normal else type_dir.name,
                            path=path,
                        )
                    )
    if not samples:
        raise FileNotFoundError(f"no test images under {root}")
    return samples


def synthetic_samples(
    products: Sequence[str], defect_types: Sequence[str], pool: int, defect_rate: float, seed: int
) -> list[SampleSpec]:
    """A pool of synthetic samples over ``products``; a ``defect_rate`` share of them defective."""
    if not products:
        raise ConfigError("at least one product is needed")
    if not 0.0 <= defect_rate <= 1.0:
        raise ConfigError("defect rate must be between 0 and 1")
    if pool < 1:
        raise ConfigError("the sample pool needs at least one sample")
    rng = np.random.default_rng(seed)
    n_defect = round(pool * defect_rate)
    samples = []
    for i in range(pool):
        product = products[i % len(products)]
        defective = i < n_defect
        samples.append(
            SampleSpec(
                product=product,
                label=DEFECT if defective else NORMAL,
                defect_type=defect_types[i % len(defect_types)] if defective else None,
                seed=int(rng.integers(0, 2**31 - 1)),
            )
        )
    order = rng.permutation(pool)  # mix products and labels
    return [samples[i] for i in order]


def camera_ids(base: str, cameras: int) -> list[str]:
    if cameras < 1:
        raise ConfigError("at least one camera is needed")
    return [base] if cameras == 1 else [f"{base}-{i}" for i in range(cameras)]


def frame_plan(
    n_samples: int,
    *,
    count: int | None,
    cameras: Sequence[str],
    bad_rate: float = 0.0,
    bad_kinds: Sequence[str] = BAD_KINDS,
    seed: int = 0,
    run_id: str | None = None,
) -> Iterator[PlannedFrame]:
    """Frames in send order; ``count=None`` plans forever.

    Cameras take turns, so each camera's frames are evenly spaced when the plan is paced at
    ``rate * len(cameras)``. Samples are drawn at random (every sample once per pass); each frame is
    replaced by a bad one with probability ``bad_rate``, cycling through ``bad_kinds`` so that every
    kind shows up.
    """
    if n_samples < 1:
        raise ConfigError("no samples to send")
    if count is not None and count < 0:
        raise ConfigError("count must not be negative")
    if not 0.0 <= bad_rate <= 1.0:
        raise ConfigError("bad rate must be between 0 and 1")
    unknown = set(bad_kinds) - set(BAD_KINDS)
    if unknown or not bad_kinds:
        raise ConfigError(f"bad kinds must be among {', '.join(BAD_KINDS)}")
    rng = np.random.default_rng(seed)
    run_id = run_id or uuid.uuid4().hex[:8]
    order: list[int] = []
    bad_cycle = itertools.cycle(bad_kinds)
    seqs = range(count) if count is not None else itertools.count()
    for seq in seqs:
        if not order:
            order = list(rng.permutation(n_samples))
        sample_index = int(order.pop())
        bad_kind = next(bad_cycle) if bad_rate > 0 and rng.random() < bad_rate else None
        camera = cameras[seq % len(cameras)]
        yield PlannedFrame(
            seq=seq,
            frame_id=f"{run_id}-{seq:07d}",
            camera_id=camera,
            sample_index=sample_index,
            bad_kind=bad_kind,
        )


def tick_time(start: float, index: int, rate: float) -> float:
    """When tick ``index`` is due on a clock started at ``start`` running at ``rate`` ticks/s.

    Computed from the start rather than from the previous tick, so sleep overshoot never accumulates.
    """
    if rate <= 0:
        raise ConfigError("rate must be positive")
    return start + index / rate
