"""The backbone's runtimes: the same verdicts from torch, OpenVINO and ONNX Runtime, the export
carried and checked by the model artifact, and the device and precision settings."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.engine import runtimes
from shared.engine.config import FitConfig, RuntimeOptions
from shared.engine.export import EXPORT_FILE, PARITY_TOLERANCE, export_backbone, probe_images
from shared.engine.fitting import fit_model
from shared.engine.metrics import auroc
from shared.engine.model import InspectionModel
from shared.engine.persistence import load_model, save_model
from shared.errors import ArtifactError, BackboneError, ConfigError
from tests.support.engine import synthetic_split, synthetic_test, tiny_vit_config

SIZE = 96
CPU_RUNTIMES = ("torch", "openvino", "onnx")


@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small efficientnet_lite0 model (real weights) fitted with torch, saved with its export."""
    model = fit_model(
        synthetic_split(("fabric", "washer"), 8, SIZE),
        FitConfig(input_size=SIZE, bank_size=400),
        export=True,
    )
    path = tmp_path_factory.mktemp("models") / "exported"
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def test_set() -> tuple[list[np.ndarray], np.ndarray]:
    images, labels = [], []
    for product in ("fabric", "washer"):
        batch, product_labels, _ = synthetic_test(product, SIZE, n_good=4, n_per_defect=2)
        images += batch
        labels += list(product_labels)
    return images, np.array(labels)


def test_every_runtime_gives_the_same_verdicts(
    exported_dir: Path, test_set: tuple[list[np.ndarray], np.ndarray]
) -> None:
    images, labels = test_set
    results = {}
    for runtime in CPU_RUNTIMES:
        model = load_model(exported_dir, options=RuntimeOptions(runtime=runtime))
        assert model.extractor.runtime == runtime
        results[runtime] = model.score_batch(images)
    reference = results["torch"]
    reference_auroc = auroc(labels, np.array([r.raw_score for r in reference]))
    for runtime in ("openvino", "onnx"):
        scored = results[runtime]
        assert [r.decision for r in scored] == [r.decision for r in reference]
        assert [r.product_class for r in scored] == [r.product_class for r in reference]
        assert max(abs(a.score - b.score) for a, b in zip(scored, reference, strict=True)) < 1e-3
        assert abs(auroc(labels, np.array([r.raw_score for r in scored])) - reference_auroc) <= 0.002
        worst_map = max(
            float(np.abs(a.anomaly_map - b.anomaly_map).max()) for a, b in zip(scored, reference, strict=True)
        )
        assert worst_map < 1e-3


def test_the_export_is_a_hashed_file_with_its_parity_on_record(exported_dir: Path) -> None:
    manifest = json.loads((exported_dir / "manifest.json").read_text())
    entry = manifest["backbone"]["export"]
    assert entry["file"] == EXPORT_FILE and EXPORT_FILE in manifest["files"]
    assert (entry["input_size"], entry["grid"], entry["feature_dim"]) == (SIZE, [12, 12], 152)
    parity = entry["parity"]
    assert set(parity["max_abs_diff"]) == {"onnx", "openvino"}
    assert all(
        diff <= PARITY_TOLERANCE * parity["reference_max_abs"] for diff in parity["max_abs_diff"].values()
    )


def test_auto_runs_openvino_with_an_export_and_torch_without(exported_dir: Path, tmp_path: Path) -> None:
    assert load_model(exported_dir, options=RuntimeOptions(runtime="auto")).extractor.runtime == "openvino"
    plain = fit_model(synthetic_split(("fabric",), 4, 64), FitConfig(input_size=64, bank_size=100))
    save_model(plain, tmp_path / "plain")
    assert load_model(tmp_path / "plain", options=RuntimeOptions(runtime="auto")).extractor.runtime == "torch"
    with pytest.raises(ArtifactError, match="lineguard export"):
        load_model(tmp_path / "plain", options=RuntimeOptions(runtime="openvino"))


def test_the_export_runs_without_the_weight_file(tiny_vit_weights: Path, tmp_path: Path) -> None:
    weights = tmp_path / "tiny.safetensors"
    weights.write_bytes(tiny_vit_weights.read_bytes())
    config = tiny_vit_config(weights, input_size=56, bank_size=100)
    model = fit_model(synthetic_split(("fabric",), 4, 56), config, options=RuntimeOptions(runtime="onnx"))
    assert model.extractor.runtime == "onnx"
    save_model(model, tmp_path / "vit")
    images, _, _ = synthetic_test("fabric", 56, n_good=2, n_per_defect=1)
    expected = [r.raw_score for r in model.score_batch(images)]
    weights.unlink()
    served = load_model(tmp_path / "vit", options=RuntimeOptions(runtime="onnx"))
    assert [r.raw_score for r in served.score_batch(images)] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ArtifactError, match="weight file"):
        load_model(tmp_path / "vit", options=RuntimeOptions(runtime="torch"))


def test_an_export_that_differs_from_torch_is_not_kept(
    exported_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(exported_dir, options=RuntimeOptions(runtime="torch"))
    honest = runtimes.OnnxBackend.__call__
    monkeypatch.setattr(runtimes.OnnxBackend, "__call__", lambda self, pixels: honest(self, pixels) * 1.01)
    with pytest.raises(BackboneError, match="differs from torch"):
        export_backbone(model.extractor)


def test_an_export_entry_that_does_not_fit_the_graph_is_refused(exported_dir: Path, tmp_path: Path) -> None:
    model = load_model(exported_dir, options=RuntimeOptions(runtime="torch"))
    assert model.extractor.export is not None
    facts = dict(model.extractor.export.facts, grid=[6, 6])
    model.extractor.export = replace(model.extractor.export, facts=facts)
    save_model(model, tmp_path / "lying")
    with pytest.raises(ArtifactError, match="export entry declares"):
        load_model(tmp_path / "lying", options=RuntimeOptions(runtime="onnx"))
    facts["grid"] = "12x12"
    save_model(model, tmp_path / "malformed")
    with pytest.raises(ArtifactError, match="grid must be two positive integers"):
        load_model(tmp_path / "malformed", options=RuntimeOptions(runtime="torch"))


def test_a_tampered_export_is_refused_before_it_is_parsed(exported_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "m"
    copy.mkdir()
    for item in exported_dir.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    data = bytearray((copy / EXPORT_FILE).read_bytes())
    data[-100] ^= 1
    (copy / EXPORT_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{EXPORT_FILE} .* does not match its sha256"):
        load_model(copy, options=RuntimeOptions(runtime="openvino"))


def test_the_runtimes_serve_several_workers_at_once(exported_dir: Path) -> None:
    images = [image for image in probe_images(SIZE)]
    for runtime in ("openvino", "onnx"):
        two_workers = RuntimeOptions(runtime=runtime, torch_threads=1, model_workers=2)
        model = load_model(exported_dir, options=two_workers)
        expected = [r.raw_score for r in model.score_batch(images)]
        outcomes: list[list[float]] = []

        def score(served: InspectionModel = model, found: list[list[float]] = outcomes) -> None:
            for _ in range(3):
                found.append([r.raw_score for r in served.score_batch(images)])

        threads = [threading.Thread(target=score) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(outcomes) == 9 and all(scores == expected for scores in outcomes)


def test_precision_is_bf16_only_where_native_or_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    auto = RuntimeOptions(runtime="torch", precision="auto")
    assert runtimes.resolve_precision(auto, "torch") == "fp32"
    assert runtimes.resolve_precision(replace(auto, precision="bf16"), "torch") == "bf16"
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert runtimes.resolve_precision(auto, "torch") == "bf16"
    # OpenVINO's bf16 without AMX was slower than its fp32 (docs/benchmarks.md, backbone runtimes)
    assert runtimes.resolve_precision(auto, "openvino") == "fp32"
    assert runtimes.resolve_precision(replace(auto, precision="bf16"), "openvino") == "bf16"
    assert runtimes.resolve_precision(auto, "onnx") == "fp32"
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16", "amx_bf16"}))
    assert runtimes.resolve_precision(auto, "openvino") == "bf16"
    assert runtimes.resolve_precision(auto, "torch") == "bf16"
    assert runtimes.resolve_precision(replace(auto, precision="fp32"), "openvino") == "fp32"
    with pytest.raises(ConfigError, match="fp32 only"):
        runtimes.resolve_precision(replace(auto, precision="bf16"), "onnx")


def test_bf16_autocast_stays_close_to_fp32(tiny_vit_weights: Path) -> None:
    config = tiny_vit_config(tiny_vit_weights, input_size=56)  # the features only: no bank is built
    from shared.engine.features import make_extractor

    extractor = make_extractor(config, tiny_vit_weights, options=RuntimeOptions(runtime="torch"))
    images = list(probe_images(56))
    reference, _ = extractor(images)
    extractor.use_runtime(RuntimeOptions(runtime="torch", precision="bf16"))
    assert extractor.backend.precision == "bf16"
    halved, _ = extractor(images)
    assert halved.dtype == torch.float32
    assert not torch.equal(halved, reference)  # it really ran in bf16
    assert float((halved - reference).abs().max()) < 0.05 * float(reference.abs().max())


def test_the_cpu_runtimes_refuse_cuda_and_cuda_needs_a_gpu() -> None:
    with pytest.raises(ConfigError, match="CPU only"):
        RuntimeOptions(runtime="openvino", device="cuda")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present; the refusal is for machines without one")
    with pytest.raises(ConfigError, match="no CUDA device"):
        runtimes.TorchBackend(torch.nn.Identity(), RuntimeOptions(device="cuda"), is_cnn=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_gives_the_same_verdicts_as_the_cpu(
    exported_dir: Path, test_set: tuple[list[np.ndarray], np.ndarray]
) -> None:
    images, _ = test_set
    cpu = load_model(exported_dir, options=RuntimeOptions(runtime="torch"))
    expected = cpu.score_batch(images)
    for precision in ("fp32", "bf16"):
        gpu = load_model(
            exported_dir, options=RuntimeOptions(runtime="auto", device="cuda", precision=precision)
        )
        assert gpu.extractor.runtime == "torch" and gpu.extractor.backend.precision == precision
        scored = gpu.score_batch(images)
        agreement = np.mean([a.decision == b.decision for a, b in zip(scored, expected, strict=True)])
        assert agreement >= (1.0 if precision == "fp32" else 0.9)
        if precision == "fp32":
            assert max(abs(a.score - b.score) for a, b in zip(scored, expected, strict=True)) < 1e-2
