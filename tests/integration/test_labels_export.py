"""``lineguard labels export`` on the real broker: feedback and its frames -> an MVTec-layout set."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from services.labels.service import LabelExport
from shared.engine.dataset import discover
from shared.frames_store import FrameStore
from shared.kafka.client import make_producer
from shared.messages.codec import encode
from shared.messages.schemas import Message, RegionMsg
from shared.settings import LabelsSettings, Settings
from tests.support.feedback import frame_of, judgement
from tests.support.messages import defect_event
from tests.support.processes import ServiceProcess, service_env


async def publish(settings: Settings, topic: str, messages: list[Message], key: str = "k") -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        for message in messages:
            record_key = getattr(message, "frame_id", None) if topic == "feedback" else key
            await producer.send_and_wait(settings.topic(topic), encode(message), key=str(record_key).encode())
    finally:
        await producer.stop()


def pixels(seed: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        return image.size


async def test_feedback_and_its_frames_become_a_labelled_set_with_sampled_normals(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings.model_copy(
        update={
            "labels": LabelsSettings(frames_dir=tmp_path / "store", normals_per_class=4, read_timeout_s=30)
        }
    )
    reject = defect_event("r-1", product="washer", size=(160, 120), region=(100, 10, 30, 8))
    stored = defect_event("r-2", product="washer", decision="reject").verdict
    escape = dataclasses.replace(defect_event("p-1", product="washer").verdict, decision="pass", score=0.3)
    lost = defect_event("x-1", product="washer").verdict
    unrouted = dataclasses.replace(defect_event("u-1").verdict, product_class="unknown")
    normals = [
        dataclasses.replace(defect_event(f"n-{i}", product="washer").verdict, decision="pass", score=0.05)
        for i in range(10)
    ]
    borderline = dataclasses.replace(
        defect_event("n-hi", product="washer").verdict, decision="pass", score=0.4
    )
    drawn = RegionMsg(x=10, y=20, width=30, height=15, score=0.0, area_fraction=450 / 19200)

    FrameStore(tmp_path / "store").save("r-2", pixels(2))
    await publish(settings, "defects", [reject])
    await publish(
        settings, "frames", [frame_of(v, pixels(i)) for i, v in enumerate([escape, *normals, borderline])]
    )
    await publish(settings, "verdicts", [*normals, borderline, escape])
    await publish(
        settings,
        "feedback",
        [
            judgement(reject.verdict, "good"),  # changed their mind: the later judgement counts
            judgement(stored, "good"),
            judgement(escape, "defect", defect_type="scratch"),
            judgement(lost, "defect"),
            judgement(unrouted, "defect"),
            judgement(reject.verdict, "defect", defect_type="missing part", regions=[drawn], size=(160, 120)),
        ],
    )

    out, staging = tmp_path / "labelled", tmp_path / "staging"
    summary = await LabelExport(settings).run(out, staging)

    assert summary.feedback == 5
    assert png_size(out / "washer/test/missing_part/r-1.png") == (160, 120)
    mask = np.asarray(Image.open(out / "washer/ground_truth/missing_part/r-1_mask.png"))
    expected = np.zeros((120, 160), np.uint8)
    expected[20:35, 10:40] = 255
    assert np.array_equal(mask, expected)
    assert (out / "washer/train/good/r-2.png").is_file()  # from the frames store
    assert png_size(out / "washer/test/scratch/p-1.png") == (64, 48)  # a pass, from the frames topic
    assert not (out / "washer/ground_truth/scratch").exists()
    assert summary.sources == {"frames_store": 1, "defects": 1, "frames": 1}
    written = json.loads((out / "labels.json").read_text())
    assert sorted((s["frame_id"], s["reason"]) for s in written["skipped"]) == [
        ("u-1", "no_class"),
        ("x-1", "no_frame"),
    ]
    sampled = sorted(p.stem for p in (staging / "washer/train/good").iterdir())
    assert len(sampled) == 4 and all(name.startswith("n-") and name != "n-hi" for name in sampled)
    assert summary.normals == {"washer": 4}

    # What fit reads: the class, its defective samples with masks, the confirmed normal.
    (washer,) = discover(out)
    assert washer.train == [out / "washer/train/good/r-2.png"]
    by_type = {(s.defect_type, s.path.name, s.mask_path is not None) for s in washer.test}
    assert by_type == {("missing_part", "r-1.png", True), ("scratch", "p-1.png", False)}

    # A frame relabelled since: the next export moves it, and leaves no stale copy behind.
    await publish(settings, "feedback", [judgement(reject.verdict, "good")])
    await LabelExport(settings).run(out)
    assert (out / "washer/train/good/r-1.png").is_file()
    assert not (out / "washer/test/missing_part").exists()
    assert not (out / "washer/ground_truth/missing_part").exists()


async def test_the_command_exports_and_refuses_a_folder_of_other_files(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    event = defect_event("r-9", product="pcb")
    await publish(kafka_settings, "defects", [event])
    await publish(kafka_settings, "feedback", [judgement(event.verdict, "defect", defect_type="crack")])
    env = service_env(kafka_settings)
    out = tmp_path / "set"
    process = ServiceProcess(["labels", "export", "--out", str(out), "--json"], env, tmp_path / "export.log")
    assert await process.wait_exit(120) == 0, process.log_text()
    assert json.loads(process.log_text()[process.log_text().index("{\n") :])["defects"] == {
        "pcb": {"crack": 1}
    }
    assert (out / "pcb/test/crack/r-9.png").is_file()
    other = tmp_path / "not-a-set"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    refused = ServiceProcess(["labels", "export", "--out", str(other)], env, tmp_path / "refused.log")
    assert await refused.wait_exit(120) == 2
    assert "not empty and not an earlier export" in refused.log_text()
    assert (other / "keep.txt").read_text() == "mine"
