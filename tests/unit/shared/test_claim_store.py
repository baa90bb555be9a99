"""The claim-check store: bytes come back only as written, only from this store, within limits."""

from __future__ import annotations

import calendar
import dataclasses
import hashlib
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.errors import ClaimCheckError, ConfigError
from shared.frames_store import ClaimStore, goes_by_reference, image_of
from shared.limits import MAX_PIXELS
from shared.messages.codec import decode, encode
from shared.messages.schemas import Frame, FrameRef
from tests.support import messages as build

NOW = calendar.timegm((2026, 12, 1, 9, 30, 0, 0, 0, 0))


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


def store_at(tmp_path: Path, **options: int) -> ClaimStore:
    return ClaimStore(tmp_path / "claims-root", **options)  # type: ignore[arg-type]


def reason(call: object) -> str:
    with pytest.raises(ClaimCheckError) as info:
        call()  # type: ignore[operator]
    return info.value.reason


def test_a_claim_check_comes_back_as_written(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    data = bytes(range(256)) * 100
    ref = store.put("cam-1/000123", data, "png", now=NOW)
    assert ref.size == len(data) and ref.sha256 == hashlib.sha256(data).hexdigest()
    assert ref.uri.startswith(store.url + "/claims/2026-12-01/09/")
    assert ref.uri.endswith(".png") and "/../" not in ref.uri
    assert store.fetch(ref) == data
    # The object's name carries the digest: the same frame id with other bytes is another object.
    other = store.put("cam-1/000123", data[::-1], "png", now=NOW)
    assert other.uri != ref.uri and store.fetch(ref) == data


def test_altered_truncated_grown_or_missing_bytes_never_come_back(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    data = b"\x89PNG" + bytes(4000)
    ref = store.put("f-1", data, "png", now=NOW)
    path = Path(store.path_of(ref))
    path.write_bytes(data[:-1] + b"\x01")  # same size, other bytes
    assert reason(lambda: store.fetch(ref)) == "frame_hash_mismatch"
    path.write_bytes(data[:-10])
    assert reason(lambda: store.fetch(ref)) == "frame_size_mismatch"
    path.write_bytes(data + b"more")
    assert reason(lambda: store.fetch(ref)) == "frame_size_mismatch"
    path.unlink()
    assert reason(lambda: store.fetch(ref)) == "frame_missing"
    # A reference that lies about the size or the hash of intact bytes is refused the same way.
    intact = store.put("f-2", data, "png", now=NOW)
    assert reason(lambda: store.fetch(dataclasses.replace(intact, size=intact.size + 1))) == (
        "frame_size_mismatch"
    )
    assert reason(lambda: store.fetch(dataclasses.replace(intact, sha256="0" * 64))) == (
        "frame_hash_mismatch"
    )


def test_a_declared_size_over_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    store = store_at(tmp_path, max_frame_bytes=2048)
    ref = FrameRef(uri=f"{store.url}/claims/2026-12-01/09/f-{'a' * 16}.png", size=4096, sha256="a" * 64)
    assert reason(lambda: store.fetch(ref)) == "too_large"  # no such object: never opened
    assert reason(lambda: store.put("f", bytes(4096), "png")) == "too_large"


@pytest.mark.parametrize(
    "uri",
    [
        "{url}/claims/2026-12-01/09/../../../secret-aaaaaaaaaaaaaaaa.png",
        "{url}/claims/2026-12-01/../09/f-aaaaaaaaaaaaaaaa.png",
        "{url}/claims/2026-12-01/09/sub/f-aaaaaaaaaaaaaaaa.png",
        "{url}/judged/f-aaaaaaaaaaaaaaaa.png",
        "{url}/claims/2026-12-01/09/f-aaaaaaaaaaaaaaaa.txt",
        "{url}/claims/2026-12-01/09/f.png",
        "{url}-other/claims/2026-12-01/09/f-aaaaaaaaaaaaaaaa.png",
        "file:///etc/claims/2026-12-01/09/f-aaaaaaaaaaaaaaaa.png",
        "s3://bucket/claims/2026-12-01/09/f-aaaaaaaaaaaaaaaa.png",
        "http://host/claims/2026-12-01/09/f-aaaaaaaaaaaaaaaa.png",
        "/etc/passwd",
    ],
)
def test_a_reference_outside_the_stores_claims_is_refused(tmp_path: Path, uri: str) -> None:
    store = store_at(tmp_path)
    outside = tmp_path / "secret-aaaaaaaaaaaaaaaa.png"
    outside.write_bytes(b"secret")
    ref = FrameRef(uri=uri.format(url=store.url), size=6, sha256=hashlib.sha256(b"secret").hexdigest())
    assert reason(lambda: store.fetch(ref)) == "ref_outside_store"


def test_garbage_collection_deletes_only_hours_past_retention(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    old = store.put("old", b"o" * 2000, "jpeg", now=NOW - 3 * 86_400 - 7200)
    edge = store.put("edge", b"e" * 2000, "jpeg", now=NOW - 3 * 86_400)  # its hour has not ended
    new = store.put("new", b"n" * 2000, "jpeg", now=NOW)
    stray = tmp_path / "claims-root" / "claims" / "not-a-day"
    stray.mkdir()
    dry = store.collect_garbage(3 * 86_400, now=NOW, dry_run=True)
    assert dry.objects == 1 and dry.bytes == 2000 and store.fetch(old)
    done = store.collect_garbage(3 * 86_400, now=NOW)
    assert done.hours == dry.hours == [time.strftime("%Y-%m-%d/%H", time.gmtime(NOW - 3 * 86_400 - 7200))]
    assert reason(lambda: store.fetch(old)) == "frame_missing"
    assert store.fetch(edge) and store.fetch(new) and stray.is_dir()


def test_urls_and_settings(tmp_path: Path) -> None:
    assert ClaimStore(f"file://{tmp_path}/x").url == f"file://{tmp_path}/x"
    with pytest.raises(ConfigError):
        ClaimStore("nosuchprotocol://bucket/prefix")
    with pytest.raises(ConfigError):
        ClaimStore(f"simplecache::file://{tmp_path}")
    assert "secret" not in repr(ClaimStore(tmp_path, options={"auto_mkdir": True}))


def test_which_images_go_by_reference() -> None:
    assert not goes_by_reference(4 << 20, 4000, 3000, 4 << 20)
    assert goes_by_reference((4 << 20) + 1, 4000, 3000, 4 << 20)
    assert goes_by_reference(1000, 5472, 3648, 4 << 20)  # 20 megapixels: over MAX_PIXELS
    assert MAX_PIXELS < 5472 * 3648


def test_a_claim_checked_frame_round_trips_and_its_image_is_verified(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    inline = build.frame(encoding="jpeg", image=jpeg(12, 8))
    assert inline.image is not None
    checked = store.claim_check(inline, now=NOW)
    assert checked.image is None and checked.image_ref is not None
    assert (checked.width, checked.height) == (12, 8)  # read from the JPEG's header
    again = decode(encode(checked), Frame)
    assert again == checked
    image = image_of(again, store, max_bytes=100, max_pixels=10)
    assert image.data == inline.image and image.max_pixels == store.max_frame_pixels
    assert reason(lambda: image_of(again, None, max_bytes=100, max_pixels=10)) == "no_claim_store"
    assert image_of(inline, None, max_bytes=100, max_pixels=10).data == inline.image


def test_a_link_planted_in_the_store_does_not_lead_out_of_it(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 2000)
    ref = store.put("f-1", b"s" * 2000, "png", now=NOW)  # the same bytes, so the hash would match
    path = Path(store.path_of(ref))
    path.unlink()
    path.symlink_to(secret)
    assert reason(lambda: store.fetch(ref)) == "ref_outside_store"
