"""Where the backbone runs: torch (CPU or CUDA, fp32 or bf16), OpenVINO or ONNX Runtime.

Every backend maps the same input to the same output: normalised pixels ``(B, 3, S, S)`` float32
to patch features ``(B, h, w, D)`` float32 numpy. torch runs the model's ``BackboneGraph``;
OpenVINO and ONNX Runtime run the ONNX export of that graph, which a model artifact carries
(``shared.engine.export``), read from the verified bytes in memory. All backends may be called
from several threads at once (the scorer's model workers).
"""

from __future__ import annotations

import functools
import logging
import queue
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from shared.engine.config import RuntimeName, RuntimeOptions
from shared.errors import BackboneError, ConfigError

log = logging.getLogger(__name__)

INPUT_NAME = "pixels"
OUTPUT_NAME = "features"


class Backend(Protocol):
    runtime: RuntimeName
    precision: str  # what it computes in: "fp32" or "bf16"

    def __call__(self, pixels: np.ndarray) -> np.ndarray: ...


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bf16 in hardware (AVX512-BF16 or AMX; a CUDA GPU with bf16)."""
    if device == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_runtime(options: RuntimeOptions, has_export: bool) -> RuntimeName:
    """The runtime ``options`` ask for, given whether the model carries a backbone export."""
    if options.runtime == "auto":
        return "openvino" if has_export and options.device == "cpu" else "torch"
    if options.runtime != "torch" and not has_export:
        raise BackboneError(
            f"the {options.runtime} runtime needs the model's backbone export, and this model has none: "
            "run `lineguard export --model DIR` once (or use the torch runtime)"
        )
    return options.runtime


def resolve_precision(options: RuntimeOptions, runtime: RuntimeName) -> str:
    """``fp32`` or ``bf16``: what ``options.precision`` means for ``runtime`` on this machine."""
    if options.precision == "fp32":
        return "fp32"
    if runtime == "onnx":
        if options.precision == "bf16":
            raise ConfigError("the onnx runtime computes in fp32 only; use openvino or torch for bf16")
        return "fp32"
    if options.precision == "bf16":
        if not native_bf16(options.device):
            log.warning("bf16 asked for, but %s has no native bf16: emulated, slower", options.device)
        return "bf16"
    if runtime == "openvino" and options.device == "cpu":
        # With AVX512-BF16 alone (no AMX) OpenVINO's bf16 backbone ran slower than its fp32
        # (11.8 against 9.6 ms per image, docs/benchmarks.md): auto takes bf16 there only with AMX.
        return "bf16" if "amx_bf16" in cpu_flags() else "fp32"
    return "bf16" if native_bf16(options.device) else "fp32"


def threads_of(options: RuntimeOptions) -> int:
    return options.torch_threads or torch.get_num_threads()


class TorchBackend:
    """The backbone graph in torch: channels-last on CPU for CNNs, autocast for bf16, CUDA if asked."""

    runtime: RuntimeName = "torch"

    def __init__(self, graph: torch.nn.Module, options: RuntimeOptions, *, is_cnn: bool) -> None:
        if options.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device cuda asked for, but torch sees no CUDA device")
        self.device = torch.device(options.device)
        self.precision = resolve_precision(options, "torch")
        self.channels_last = is_cnn and options.channels_last
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.graph = graph.to(self.device).to(memory_format=memory_format)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
        self._autocast = torch.bfloat16 if self.precision == "bf16" else None

    @torch.inference_mode()
    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(pixels)
        if self.device.type == "cuda":
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.device.type, dtype=self._autocast or torch.float32, enabled=self._autocast is not None
        ):
            features = self.graph(tensor)
        return np.ascontiguousarray(features.float().cpu().numpy())


class OnnxBackend:
    """The export in ONNX Runtime's CPU provider (``InferenceSession.run`` is safe from many threads)."""

    runtime: RuntimeName = "onnx"
    precision = "fp32"

    def __init__(self, data: bytes, options: RuntimeOptions) -> None:
        import onnxruntime as ort

        resolve_precision(options, "onnx")  # refuses bf16
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = threads_of(options)
        session_options.inter_op_num_threads = 1
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.log_severity_level = 3
        # Idle pool threads must not spin: the cores are shared with decoding, Kafka and the broker.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(data, session_options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types: a graph it cannot load
            raise BackboneError(f"ONNX Runtime cannot load the backbone export ({exc})") from None

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0])


class OpenVinoBackend:
    """The export compiled by OpenVINO for the CPU: one stream and one infer request per worker."""

    runtime: RuntimeName = "openvino"

    def __init__(self, data: bytes, options: RuntimeOptions) -> None:
        import openvino as ov

        precision = resolve_precision(options, "openvino")
        threads = threads_of(options)
        config: dict[str, Any] = {
            "NUM_STREAMS": options.model_workers,
            "INFERENCE_NUM_THREADS": threads * options.model_workers,
            # Set either way: on CPUs with bf16 OpenVINO would otherwise pick bf16 by itself.
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            # Shared cores: let the OS place threads, as for torch, instead of pinning them.
            "ENABLE_CPU_PINNING": False,
        }
        try:
            core = ov.Core()
            compiled = core.compile_model(core.read_model(data), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError for graphs it cannot read or compile
            raise BackboneError(f"OpenVINO cannot compile the backbone export ({exc})") from None
        # On CPUs without native bf16 OpenVINO computes in f32 whatever the hint: report what it does.
        computes = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = "bf16" if computes == ov.Type.bf16 else "fp32"
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(options.model_workers):
            self._requests.put(compiled.create_infer_request())

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        request = self._requests.get()  # a free request; callers beyond the workers wait here
        try:
            request.infer({INPUT_NAME: pixels})
            # The request reuses its output memory for the next call: copy before handing it back.
            return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        finally:
            self._requests.put(request)


def make_backend(
    runtime: RuntimeName,
    options: RuntimeOptions,
    *,
    graph: torch.nn.Module | None,
    export: bytes | None,
    is_cnn: bool,
) -> Backend:
    if runtime == "torch":
        if graph is None:
            raise BackboneError("the torch runtime needs the backbone's weights, and none were loaded")
        return TorchBackend(graph, options, is_cnn=is_cnn)
    if export is None:
        raise BackboneError(f"the {runtime} runtime needs the model's backbone export")
    if runtime == "onnx":
        return OnnxBackend(export, options)
    return OpenVinoBackend(export, options)
