"""A live RTSP camera on localhost: GStreamer's RTSP server streaming its moving test pattern as H.264.

Run by the system Python, which has the ``gi`` bindings (Debian: python3-gi,
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-ugly for x264enc); it imports nothing from the
project. Prints ``ready rtsp://127.0.0.1:PORT/camera`` once it listens, then serves until killed.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=int, default=10)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    # A pipeline per client. With one shared media, GStreamer 1.22's server aborts
    # (gst_rtsp_media_get_rates: assertion failed) when clients come and go on it at once, as the
    # gateway's two cameras on one URL do: it failed CI once, and 3 ffmpeg clients at a time
    # crashed it within 22 rounds, where unshared media came through 90.
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball "
        f"! video/x-raw,width={args.width},height={args.height},framerate={args.rate}/1 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.rate} "
        f"! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(False)
    server.get_mount_points().add_factory("/camera", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on port {args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print(f"ready rtsp://127.0.0.1:{args.port}/camera", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
