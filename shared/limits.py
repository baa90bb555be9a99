"""Every size limit that more than one module enforces: one constant each, one place.

The engine (which knows nothing of the wire) and the message schemas both import from here, so an
image the decoder accepts is always one whose dimensions the output messages accept too.
"""

from __future__ import annotations

# Images
MAX_DIMENSION = 16384  # pixels per side, anywhere an image is decoded or described
MAX_PIXELS = 4096 * 4096  # width * height decoded at once (bounds pixel memory before decoding)
MAX_IMAGE_BYTES = 8 << 20  # encoded image bytes in a Frame or DefectEvent
MAX_FILE_BYTES = 64 << 20  # image files on disk (datasets) may be larger than frames on the wire
# A claim-checked frame (its bytes in the frames store, a reference on the wire): at most
# MAX_FILE_BYTES, and this many pixels. Readers decode it reduced to what they need where they can
# (JPEG DCT-scaled, others decoded whole at <= 4 bytes a pixel, then box-reduced).
MAX_REFERENCED_PIXELS = 8192 * 8192

# Messages
MAX_MESSAGE_BYTES = 16 << 20  # one encoded message (a dead letter: DEAD_LETTER_MAX_BYTES)
DEAD_LETTER_MAX_BYTES = MAX_MESSAGE_BYTES + (1 << 20)  # a maximal original record + envelope
ID_MAX = 256  # ids, names, versions
TEXT_MAX = 4096  # reasons, paths, attribute values
DETAIL_MAX = 65536  # a dead letter's detail text
MAX_ATTRIBUTES = 64
MAX_REGIONS = 256
MAX_HEADERS = 256
MAX_TIMESTAMP_NS = (1 << 63) - 1

# Kafka: the topics' max.message.bytes, so that every dead letter fits on the dlq topic.
KAFKA_MAX_MESSAGE_BYTES = DEAD_LETTER_MAX_BYTES + (1 << 20)

# Names
CLASS_NAME_MAX = 64  # product class names (they become file names and metric labels)
