"""Real video for the camera gateway's tests: clips made by FFmpeg, and live streams served on
localhost by FFmpeg (HTTP, MPEG-TS, ``-listen 1``) and by GStreamer's RTSP server.

FFmpeg and the GStreamer RTSP server are Debian packages (``make media-tools`` installs them when
missing). The RTSP server runs under the system Python (``/usr/bin/python3``, which has the
``gi`` bindings; the project's venv need not), as ``tests/support/rtsp_server.py``.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.kafka.broker import free_port

RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        pytest.fail("ffmpeg is not installed: run `make media-tools`")
    return path


def make_clip(path: Path, *, seconds: float = 3.0, rate: int = 10, size: str = "320x240") -> Path:
    """An H.264 MP4 of FFmpeg's test pattern (no data file needed)."""
    subprocess.run(
        [ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc=size={size}:rate={rate}", "-t", str(seconds), "-pix_fmt", "yuv420p",
         "-c:v", "libx264", "-preset", "ultrafast", "-g", str(rate), str(path)],
        check=True,
        timeout=60,
    )  # fmt: skip
    return path


def _listening(port: int) -> bool:
    """Whether a socket listens on ``port``, read from /proc: connecting to check would use up the
    one client an FFmpeg ``-listen 1`` server accepts."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    return True
    return False


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the stream server exited with {process.returncode}")
        if _listening(port):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} after {timeout}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def http_stream(*, seconds: float = 30.0, rate: int = 10, size: str = "320x240") -> Iterator[str]:
    """A live MPEG-TS stream over HTTP, served by FFmpeg itself for one client; yields its URL.

    FFmpeg accepts the connection before it starts encoding, so the client sees a live stream
    from its first frame (``-re``: at the frame rate, not as fast as possible).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/camera.ts"
    process = subprocess.Popen(
        [ffmpeg(), "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
         "-i", f"testsrc=size={size}:rate={rate}", "-t", str(seconds), "-pix_fmt", "yuv420p",
         "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(rate),
         "-f", "mpegts", "-listen", "1", url],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for_port(port, process, 10.0)
        yield url
    finally:
        _stop(process)


@contextlib.contextmanager
def rtsp_stream(*, rate: int = 10, size: str = "320x240") -> Iterator[str]:
    """A live H.264 RTSP stream from GStreamer's RTSP server; yields its URL."""
    if not Path(SYSTEM_PYTHON).exists():
        pytest.fail(f"{SYSTEM_PYTHON} is needed to run GStreamer's RTSP server (python3-gi)")
    port = free_port()
    width, height = size.split("x")
    process = subprocess.Popen(
        [SYSTEM_PYTHON, str(RTSP_SERVER), "--port", str(port), "--rate", str(rate),
         "--width", width, "--height", height],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()  # "ready <url>" once it listens
        if not line.startswith("ready "):
            process.wait(5)
            pytest.fail(
                f"GStreamer's RTSP server did not start (exit {process.returncode}): "
                "run `make media-tools` (gir1.2-gst-rtsp-server-1.0, python3-gi, gstreamer1.0-plugins-ugly)"
            )
        yield line.removeprefix("ready ")
    finally:
        _stop(process)
