"""The backbone's ONNX export: part of the model artifact, checked against torch before it is kept.

``export_backbone`` traces the model's ``BackboneGraph`` (backbone + feature aggregation) into an
ONNX graph with a free batch size, then runs a fixed set of probe images through torch (fp32) and
through every CPU runtime that reads the export (ONNX Runtime, OpenVINO, both fp32); an export
whose features differ by more than ``PARITY_TOLERANCE`` of the features' largest magnitude is
refused. The measured differences go into the manifest beside the file's sha256
(``backbone.export``), so the parity of a model's export is on record, not assumed.
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from shared.engine.config import RuntimeOptions
from shared.engine.features import FeatureExtractor
from shared.engine.runtimes import INPUT_NAME, OUTPUT_NAME, OnnxBackend, OpenVinoBackend
from shared.errors import BackboneError

EXPORT_FILE = "backbone.onnx"
EXPORT_FORMAT = "onnx"
OPSET = 17
# Largest feature difference an fp32 export may show against torch fp32, relative to the largest
# feature magnitude. Measured differences are ~1e-6 of it (float rounding); a wrong graph is off by
# the features' own size.
PARITY_TOLERANCE = 1e-3
PROBE_IMAGES = 4


@dataclass(frozen=True)
class BackboneExport:
    """An ONNX export's bytes and its manifest entry (``backbone.export``)."""

    data: bytes
    facts: dict[str, Any]


def probe_images(size: int) -> np.ndarray:
    """Fixed ``(PROBE_IMAGES, size, size, 3)`` uint8 images: noise, a gradient, stripes, plain grey."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    gradient = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), axis=-1)
    stripes = np.repeat(((np.arange(size) // 8) % 2 * 255)[None, :, None], size, axis=0)
    return np.stack(
        [
            rng.integers(0, 256, (size, size, 3)),
            gradient,
            np.repeat(stripes, 3, axis=2),
            np.full((size, size, 3), 128),
        ]
    ).astype(np.uint8)


def _cpu_graph(extractor: FeatureExtractor) -> torch.nn.Module:
    if extractor.graph is None:
        raise BackboneError("exporting needs the torch backbone (load the model with the torch runtime)")
    graph: torch.nn.Module = extractor.graph
    if next(graph.parameters()).device.type != "cpu":  # a model loaded onto a GPU: export a CPU copy
        graph = copy.deepcopy(graph).cpu()
    return graph.eval()


def export_backbone(extractor: FeatureExtractor) -> BackboneExport:
    """The ONNX export of ``extractor``'s backbone graph, its parity with torch checked."""
    graph = _cpu_graph(extractor)
    size = extractor.config.input_size
    pixels = extractor.preprocess(list(probe_images(size)))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            # The TorchScript-based exporter (torch's new one needs onnxscript, not a dependency);
            # its deprecation and tracer warnings say nothing about this graph's correctness,
            # which the parity check below establishes.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (torch.from_numpy(pixels[:1]),),
                buffer,  # type: ignore[arg-type]  # a file object works (documented), the stub says path
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as exc:  # torch's exporter raises many types; all mean: no export
        raise BackboneError(
            f"{extractor.spec.name} cannot be exported to ONNX ({type(exc).__name__}: {exc})"
        ) from None
    data = buffer.getvalue()
    with torch.inference_mode():
        reference = graph(torch.from_numpy(pixels)).numpy()
    scale = float(np.abs(reference).max()) or 1.0
    options = RuntimeOptions(runtime="onnx", torch_threads=torch.get_num_threads())
    differences: dict[str, float] = {}
    for name, backend in (
        ("onnx", OnnxBackend(data, options)),
        ("openvino", OpenVinoBackend(data, replace(options, runtime="openvino"))),
    ):
        features = backend(pixels)
        if features.shape != reference.shape:
            raise BackboneError(f"{name} gives features {features.shape}, torch {reference.shape}")
        differences[name] = float(np.abs(features - reference).max())
        if not differences[name] <= PARITY_TOLERANCE * scale:
            raise BackboneError(
                f"the ONNX export of {extractor.spec.name} differs from torch by {differences[name]:.3g} "
                f"in {name} (largest feature {scale:.3g}, tolerance {PARITY_TOLERANCE} of it); not kept"
            )
    _, height, width, dim = reference.shape
    facts = {
        "file": EXPORT_FILE,
        "format": EXPORT_FORMAT,
        "opset": OPSET,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "input_size": size,
        "grid": [height, width],
        "feature_dim": dim,
        "exporter": f"torch {torch.__version__}",
        "parity": {
            "probe_images": len(pixels),
            "reference_max_abs": scale,
            "max_abs_diff": differences,
            "tolerance": PARITY_TOLERANCE,
        },
    }
    return BackboneExport(data, facts)
