"""Models you can trust: signed announcements, trusted keys, replays, confined paths, and a model
watcher that no bad announcement can stop (no broker here: tests/integration/test_line_models.py
runs the same on a real one)."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.cli import main
from services.scorer import metrics
from services.scorer.models import (
    REFUSAL_REASONS,
    ModelHolder,
    ModelWatcher,
    ServingModel,
    announcement_for,
    load_model_dir,
    warm_up,
)
from services.scorer.trust import (
    AnnouncementGate,
    generate_signing_key,
    key_id_of,
    load_signing_key,
    load_trusted_keys,
    sign_announcement,
    verify_signature,
)
from shared.engine.config import Decision, FitConfig, ScoreResult
from shared.errors import ConfigError, ModelRefused
from shared.messages.codec import decode, encode
from shared.messages.schemas import ModelAnnouncement
from shared.settings import Settings, load_settings

SHA = "ab" * 32


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("LINEGUARD_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def keys(tmp_path: Path) -> SimpleNamespace:
    trusted = generate_signing_key(tmp_path / "trusted", "operator")
    other = generate_signing_key(tmp_path / "other", "stranger")
    return SimpleNamespace(
        trusted=trusted,
        other=other,
        private=load_signing_key(trusted.private),
        stranger=load_signing_key(other.private),
        table=load_trusted_keys([trusted.public]),
    )


def announcement(**changes: Any) -> ModelAnnouncement:
    base = ModelAnnouncement(model_version="m2", path="line-a/m2", announced_at=time.time_ns(), sha256=SHA)
    return dataclasses.replace(base, **changes)


def refusals(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "lineguard_scorer_model_announcements_refused_total", {"reason": reason}
    )
    return value or 0.0


# ---- keys -----------------------------------------------------------------------------------------


def test_keygen_writes_an_owner_only_private_key_and_a_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "keys"
    assert main(["model", "keygen", "--out", str(out), "--name", "plant7"]) == 0
    private, public = out / "plant7.key", out / "plant7.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    (key_id,) = load_trusted_keys([public])
    assert key_id in capsys.readouterr().out
    assert key_id == key_id_of(load_signing_key(private).public_key())
    # Never overwritten: a second keygen into the same place is refused.
    assert main(["model", "keygen", "--out", str(out), "--name", "plant7"]) == 2
    assert "exists" in capsys.readouterr().err


def test_a_signing_key_others_can_read_is_refused(keys: SimpleNamespace) -> None:
    os.chmod(keys.trusted.private, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_signing_key(keys.trusted.private)


def test_trusted_keys_come_from_files_and_folders(keys: SimpleNamespace, tmp_path: Path) -> None:
    table = load_trusted_keys([keys.trusted.public, keys.other.public.parent])
    assert set(table) == {keys.trusted.key_id, keys.other.key_id}


def test_a_trusted_key_setting_that_names_no_usable_key_is_an_error_never_unsigned(
    keys: SimpleNamespace, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_trusted_keys([tmp_path / "missing.pub"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no \*\.pub"):
        load_trusted_keys([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_trusted_keys([keys.trusted.private])
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = ec_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "ec.pub").write_bytes(pem)
    with pytest.raises(ConfigError, match="not an Ed25519"):
        load_trusted_keys([tmp_path / "ec.pub"])


def test_the_trusted_keys_setting_takes_a_list_or_comma_separated_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LINEGUARD_SCORER__TRUSTED_KEYS", "/etc/lineguard/keys,/opt/extra.pub")
    assert load_settings().scorer.trusted_keys == [Path("/etc/lineguard/keys"), Path("/opt/extra.pub")]
    monkeypatch.setenv("LINEGUARD_SCORER__TRUSTED_KEYS", '["/etc/lineguard/keys"]')
    assert load_settings().scorer.trusted_keys == [Path("/etc/lineguard/keys")]
    monkeypatch.delenv("LINEGUARD_SCORER__TRUSTED_KEYS")
    assert load_settings().scorer.trusted_keys == []


# ---- signatures -----------------------------------------------------------------------------------


def test_a_signed_announcement_survives_the_wire_and_verifies(keys: SimpleNamespace) -> None:
    signed = sign_announcement(announcement(), keys.private)
    assert signed.key_id == keys.trusted.key_id and len(signed.signature) == 64
    received = decode(encode(signed), ModelAnnouncement)
    verify_signature(received, keys.table)  # no exception


SIGNED_FIELDS = [f.name for f in dataclasses.fields(ModelAnnouncement) if f.name != "signature"]


@pytest.mark.parametrize("field", SIGNED_FIELDS)
def test_the_signature_covers_every_field(keys: SimpleNamespace, field: str) -> None:
    signed = sign_announcement(announcement(), keys.private)
    changed_values = {
        "model_version": "m3",
        "path": "line-a/m3",
        "announced_at": signed.announced_at + 1,
        "sha256": "cd" * 32,
        "key_id": keys.other.key_id,  # another trusted key's id: the signature is not that key's
    }
    assert set(changed_values) == set(SIGNED_FIELDS), "a new field must be signed and tested here"
    table = load_trusted_keys([keys.trusted.public, keys.other.public])
    with pytest.raises(ModelRefused) as refused:
        verify_signature(dataclasses.replace(signed, **{field: changed_values[field]}), table)
    assert refused.value.reason == "bad_signature"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: announcement(), "unsigned"),
        (lambda k: sign_announcement(announcement(), k.stranger), "unknown_key"),
        (lambda k: dataclasses.replace(announcement(), key_id=k.trusted.key_id), "bad_signature"),
        (
            lambda k: dataclasses.replace(announcement(), key_id=k.trusted.key_id, signature=bytes(64)),
            "bad_signature",
        ),
        (
            lambda k: dataclasses.replace(
                sign_announcement(announcement(), k.stranger), key_id=k.trusted.key_id
            ),
            "bad_signature",
        ),
        (lambda k: dataclasses.replace(announcement(), signature=bytes(64)), "unsigned"),
    ],
    ids=["unsigned", "untrusted key", "no signature", "zero signature", "another key's", "signature, no id"],
)
def test_an_announcement_not_signed_by_a_trusted_key_is_refused(
    keys: SimpleNamespace, make: Any, reason: str
) -> None:
    with pytest.raises(ModelRefused) as refused:
        verify_signature(make(keys), keys.table)
    assert refused.value.reason == reason


def test_without_trusted_keys_announcements_are_taken_unsigned(keys: SimpleNamespace) -> None:
    gate = AnnouncementGate({})
    assert not gate.signed
    gate.admit(announcement())
    gate.admit(sign_announcement(announcement(), keys.stranger))


# ---- order: replays and clocks ------------------------------------------------------------------


def test_an_announcement_no_newer_than_the_last_one_taken_is_a_replay(keys: SimpleNamespace) -> None:
    gate = AnnouncementGate(keys.table)
    now = time.time_ns()
    first = sign_announcement(announcement(model_version="m2", announced_at=now - 10_000), keys.private)
    gate.admit(first)
    for replay in (first, sign_announcement(announcement(announced_at=now - 20_000), keys.private)):
        with pytest.raises(ModelRefused) as refused:
            gate.admit(replay)
        assert refused.value.reason == "stale"
    # A roll-back is a new announcement of an older model: newer timestamp, new signature.
    gate.admit(sign_announcement(announcement(model_version="m1", announced_at=now), keys.private))
    assert gate.latest == now


def test_an_announcement_from_the_future_is_refused(keys: SimpleNamespace) -> None:
    now = 1_700_000_000 * 10**9
    gate = AnnouncementGate(keys.table, max_skew_ns=300 * 10**9, clock=lambda: now)
    gate.admit(sign_announcement(announcement(announced_at=now + 299 * 10**9), keys.private))
    with pytest.raises(ModelRefused) as refused:
        gate.admit(sign_announcement(announcement(announced_at=now + 301 * 10**9), keys.private))
    assert refused.value.reason == "future"


# ---- the watcher ---------------------------------------------------------------------------------


def serving(version: str) -> ServingModel:
    return ServingModel(model=SimpleNamespace(class_models=[]), version=version, source="test")


class RecordingLoader:
    """Stands in for load_model_dir (a unit test of the watcher's decisions, not of loading)."""

    def __init__(self, outcome: Any = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.outcome = outcome

    def __call__(self, path: Any, **kwargs: Any) -> ServingModel:
        self.calls.append((str(path), kwargs))
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return serving(kwargs["expected_version"])


def watcher_settings(tmp_path: Path, trusted: list[Path]) -> Settings:
    root = tmp_path / "models"
    root.mkdir(exist_ok=True)
    scorer = {"models_root": root, "weights_dir": tmp_path / "weights", "trusted_keys": trusted}
    return Settings().model_copy(update={"scorer": Settings().scorer.model_copy(update=scorer)})


BAD_ANNOUNCEMENTS: dict[str, tuple[Any, str]] = {
    "not msgpack": (lambda k: b"\xc1garbage", "malformed"),
    "empty": (lambda k: b"", "malformed"),
    "another schema": (lambda k: b"\x81\xa6schema\xa3foo", "malformed"),
    "unsigned": (lambda k: encode(announcement()), "unsigned"),
    "untrusted key": (lambda k: encode(sign_announcement(announcement(), k.stranger)), "unknown_key"),
    "path changed after signing": (
        lambda k: encode(dataclasses.replace(sign_announcement(announcement(), k.private), path="/etc")),
        "bad_signature",
    ),
    "replay": (
        lambda k: encode(sign_announcement(announcement(announced_at=time.time_ns() - 10**12), k.private)),
        "stale",
    ),
    "from the future": (
        lambda k: encode(sign_announcement(announcement(announced_at=time.time_ns() + 10**13), k.private)),
        "future",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ANNOUNCEMENTS))
async def test_a_bad_announcement_is_refused_counted_and_the_current_model_stays(
    keys: SimpleNamespace, tmp_path: Path, case: str
) -> None:
    make, reason = BAD_ANNOUNCEMENTS[case]
    holder = ModelHolder(serving("m1"))
    loader = RecordingLoader()
    watcher = ModelWatcher(
        watcher_settings(tmp_path, [keys.trusted.public]), holder, from_latest=False, loader=loader
    )
    watcher.gate.admit(sign_announcement(announcement(announced_at=time.time_ns() - 10**11), keys.private))
    before = refusals(reason)
    await watcher.consider([make(keys)])
    assert refusals(reason) == before + 1
    assert loader.calls == [] and holder.latest_version == "m1" and holder.current().version == "m1"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ModelRefused("outside", reason="outside_models_root"), "outside_models_root"),
        (ModelRefused("tampered", reason="bad_artifact"), "bad_artifact"),
        (RuntimeError("faiss exploded"), "load_failed"),
        (MemoryError(), "load_failed"),
        (ModelRefused("odd", reason="some_new_reason"), "load_failed"),  # labels stay a fixed set
    ],
)
async def test_a_model_that_fails_to_load_in_any_way_is_refused_and_the_watcher_goes_on(
    keys: SimpleNamespace, tmp_path: Path, error: BaseException, reason: str
) -> None:
    holder = ModelHolder(serving("m1"))
    loader = RecordingLoader(error)
    watcher = ModelWatcher(
        watcher_settings(tmp_path, [keys.trusted.public]), holder, from_latest=False, loader=loader
    )
    before = refusals(reason)
    await watcher.consider([encode(sign_announcement(announcement(), keys.private))])
    assert refusals(reason) == before + 1 and reason in REFUSAL_REASONS
    assert holder.current().version == "m1" and watcher.refused == ["m2"]
    # ... and the next good announcement is taken.
    loader.outcome = None
    await watcher.consider([encode(sign_announcement(announcement(model_version="m3"), keys.private))])
    assert holder.current().version == "m3"


async def test_a_signed_announcement_is_loaded_inside_the_models_root_with_the_weights_directory(
    keys: SimpleNamespace, tmp_path: Path
) -> None:
    settings = watcher_settings(tmp_path, [keys.trusted.public])
    holder = ModelHolder(serving("m1"))
    loader = RecordingLoader()
    watcher = ModelWatcher(settings, holder, from_latest=False, loader=loader)
    now = time.time_ns()
    older = sign_announcement(announcement(model_version="m2", announced_at=now - 1000), keys.private)
    newer = sign_announcement(announcement(model_version="m3", announced_at=now), keys.private)
    await watcher.consider([encode(newer), encode(older)])  # one poll: the newest valid one wins
    ((path, kwargs),) = loader.calls
    assert path == "line-a/m2" and kwargs["expected_version"] == "m3"
    assert kwargs["root"] == settings.scorer.models_root and kwargs["weights_dir"] == tmp_path / "weights"
    assert kwargs["expected_sha256"] == SHA
    assert holder.latest_version == "m3" and watcher.gate.latest == now


def test_the_scorer_says_at_start_whether_announcements_must_be_signed(
    keys: SimpleNamespace, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="lineguard.scorer.models"):
        ModelWatcher(watcher_settings(tmp_path, []), ModelHolder(), from_latest=False)
        ModelWatcher(watcher_settings(tmp_path, [keys.trusted.public]), ModelHolder(), from_latest=False)
    unsigned, signed = [r for r in caplog.records if r.getMessage().startswith("model_announcements_")]
    assert unsigned.getMessage() == "model_announcements_unsigned" and unsigned.levelno == logging.WARNING
    assert signed.getMessage() == "model_announcements_signed" and signed.levelno == logging.INFO
    assert keys.trusted.key_id in str(signed.__dict__["fields"])


def test_a_watcher_with_an_unusable_trusted_key_setting_does_not_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ModelWatcher(watcher_settings(tmp_path, [tmp_path / "nope.pub"]), ModelHolder(), from_latest=False)


# ---- real model directories ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shared.engine.config import FitConfig
    from shared.engine.fitting import fit_model
    from shared.engine.persistence import save_model
    from shared.synthetic import render_sample

    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    normals = [render_sample("washer", rng, 64)[0] for _ in range(6)]
    save_model(
        fit_model({"washer": normals}, FitConfig(input_size=64, bank_size=50, min_holdout=2)), root / "v1"
    )
    return root


def test_an_announcement_names_the_model_relative_to_the_models_root(
    model_root: Path, tmp_path: Path
) -> None:
    made = announcement_for(model_root / "v1", models_root=model_root)
    assert made.path == "v1" and len(made.sha256) == 64 and made.key_id == "" and made.signature == b""
    with pytest.raises(ModelRefused) as refused:
        announcement_for(model_root / "v1", models_root=tmp_path)
    assert refused.value.reason == "outside_models_root"


@pytest.mark.parametrize(
    ("path", "kwargs", "reason"),
    [
        ("v1/../v1", {}, "outside_models_root"),
        ("/etc", {}, "outside_models_root"),
        ("missing", {}, "bad_artifact"),
        ("v1", {"expected_sha256": "0" * 64}, "digest_mismatch"),
        ("v1", {"expected_version": "not-this-one"}, "version_mismatch"),
    ],
)
def test_loading_an_announced_directory_refuses_with_a_reason(
    model_root: Path, path: str, kwargs: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ModelRefused) as refused:
        load_model_dir(Path(path), root=model_root, **kwargs)
    assert refused.value.reason == reason


def test_a_model_loads_from_inside_the_root_with_its_digest(model_root: Path) -> None:
    made = announcement_for(model_root / "v1", models_root=model_root)
    loaded = load_model_dir(
        Path(made.path), root=model_root, expected_sha256=made.sha256, expected_version=made.model_version
    )
    assert loaded.version == made.model_version and loaded.manifest_sha256 == made.sha256


def test_a_model_loads_in_the_runtime_the_settings_name(
    model_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.engine.config import RuntimeOptions
    from shared.engine.export import export_backbone
    from shared.engine.persistence import load_model, save_model

    plain = load_model_dir(Path("v1"), root=model_root, options=RuntimeOptions(runtime="auto"))
    assert plain.model.extractor.runtime == "torch"  # no export: auto stays with torch
    with pytest.raises(ModelRefused, match="lineguard export") as refused:
        load_model_dir(Path("v1"), root=model_root, options=RuntimeOptions(runtime="openvino"))
    assert refused.value.reason == "bad_artifact"
    exported = load_model(model_root / "v1")
    exported.extractor.export = export_backbone(exported.extractor)
    save_model(exported, tmp_path / "v1x")
    monkeypatch.setenv("LINEGUARD_SCORER__RUNTIME", "onnx")
    served = load_model_dir(tmp_path / "v1x", options=load_settings().scorer.runtime_options())
    assert served.model.extractor.runtime == "onnx"
    two_workers = RuntimeOptions(runtime="auto", model_workers=2, torch_threads=1)
    served = load_model_dir(tmp_path / "v1x", options=two_workers)
    assert served.model.extractor.runtime == "openvino"


def test_the_scorer_setting_decides_how_many_confirmed_normals_a_cold_start_class_needs(
    model_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.engine.fewshot import fit_few_shot
    from shared.engine.persistence import save_model
    from shared.synthetic import render_sample

    rng = np.random.default_rng(1)
    shots = [render_sample("washer", rng, 64)[0] for _ in range(3)]
    config = FitConfig(input_size=64, bank_size=200, shot_gain_steps=1, review_until_confirmed=5)
    save_model(fit_few_shot({"washer": shots}, config), model_root / "cold")
    frame = [render_sample("washer", rng, 64)[0]]

    as_fitted = load_model_dir(Path("cold"), root=model_root)
    assert as_fitted.model.score_batch(frame)[0].decision == Decision.REVIEW
    stricter = load_model_dir(Path("cold"), root=model_root, review_until_confirmed=100)
    assert "0 of 100 confirmed normal" in stricter.model.score_batch(frame)[0].reason
    gate_off = load_model_dir(Path("cold"), root=model_root, review_until_confirmed=0)
    assert gate_off.model.score_batch(frame)[0].decision in (Decision.PASS, Decision.REJECT)
    # A model fitted on many normals has no cold start: the setting changes nothing.
    plain = load_model_dir(Path("v1"), root=model_root, review_until_confirmed=100)
    assert plain.model.score_batch(frame)[0].decision != Decision.REVIEW

    # From the environment to the settings every load takes.
    monkeypatch.setenv("LINEGUARD_SCORER__REVIEW_UNTIL_CONFIRMED", "20")
    assert load_settings().scorer.review_until_confirmed == 20
    monkeypatch.setenv("LINEGUARD_SCORER__REVIEW_UNTIL_CONFIRMED", "-1")
    with pytest.raises(ConfigError):
        load_settings()


async def test_the_watcher_loads_announced_models_with_the_cold_start_setting(tmp_path: Path) -> None:
    settings = watcher_settings(tmp_path, [])
    settings = settings.model_copy(
        update={"scorer": settings.scorer.model_copy(update={"review_until_confirmed": 20})}
    )
    loader = RecordingLoader()
    watcher = ModelWatcher(settings, ModelHolder(serving("m1")), from_latest=False, loader=loader)
    await watcher.consider([encode(announcement(announced_at=time.time_ns()))])
    assert [kwargs["review_until_confirmed"] for _, kwargs in loader.calls] == [20]


def test_a_model_whose_warm_up_scores_are_not_finite_is_refused() -> None:
    class NonFinite:
        input_size = 32

        def score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]:
            nan = float("nan")
            blank = np.zeros((32, 32), np.float32)
            return [
                ScoreResult("washer", 1.0, False, nan, nan, 1.0, Decision.PASS, "", [], blank) for _ in images
            ]

    with pytest.raises(ModelRefused) as refused:
        warm_up(NonFinite())
    assert refused.value.reason == "warm_up_failed"


def test_announce_needs_a_signing_key_or_an_explicit_unsigned(
    model_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["announce", "--model", str(model_root / "v1")])
    assert exited.value.code == 2
    assert "--signing-key" in capsys.readouterr().err


def test_announce_takes_the_model_path_as_typed_and_signs_the_announcement(
    model_root: Path, keys: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from services.scorer.cli import prepare_announcement
    from services.scorer.trust import verify_signature

    monkeypatch.chdir(model_root.parent)
    settings = Settings().model_copy(
        update={"scorer": Settings().scorer.model_copy(update={"models_root": Path(model_root.name)})}
    )
    version, made = prepare_announcement(Path(model_root.name) / "v1", settings, keys.private)
    assert made.path == "v1" and made.model_version == version
    verify_signature(made, keys.table)
    outside = shutil.copytree(model_root / "v1", tmp_path / "v1")
    with pytest.raises(ModelRefused) as refused:
        prepare_announcement(outside, settings, keys.private)
    assert refused.value.reason == "outside_models_root"
