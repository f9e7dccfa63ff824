"""A JPEG without what a camera writes about itself and its owner: EXIF (GPS position, body serial number, owner's
name), XMP, IPTC, maker notes, comments, and the extra pictures a phone appends after the image (depth and gain
maps, a preview). The picture's own bytes are kept as they are: nothing is decoded or encoded again.

A phone's photo of a pothole carried where and by whom it was taken to every viewer of the map (a data-protection
review). Kept: APP0 (JFIF), APP2 (the colour profile) and APP14 (Adobe's colour transform, needed to decode CMYK).
"""

from __future__ import annotations

SOI, SOS, EOI = 0xD8, 0xDA, b"\xff\xd9"
KEPT_APP = {0xE0, 0xE2, 0xEE}
COMMENT = 0xFE
STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and the restart markers carry no length


def without_metadata(jpeg: bytes) -> bytes:
    """JPEG with its metadata segments and anything after its end dropped; JPEG itself when its segments cannot
    be followed (the caller's checks decide whether it is an image at all)."""
    if not jpeg.startswith(b"\xff\xd8"):
        return jpeg
    out, i = bytearray(jpeg[:2]), 2
    while i + 4 <= len(jpeg):
        if jpeg[i] != 0xFF:
            return jpeg
        marker = jpeg[i + 1]
        if marker == 0xFF:  # fill bytes before a marker
            i += 1
            continue
        if marker in STANDALONE:
            out += jpeg[i:i + 2]
            i += 2
            continue
        length = int.from_bytes(jpeg[i + 2:i + 4], "big")
        if length < 2 or i + 2 + length > len(jpeg):
            return jpeg
        if marker == SOS:
            # Entropy-coded data holds no FF D9 (an FF there is followed by 00 or a restart marker), so the first
            # one ends the image; a phone's appended pictures come after it.
            end = jpeg.find(EOI, i + 2 + length)
            return bytes(out + jpeg[i:end + 2]) if end >= 0 else jpeg
        if not ((0xE1 <= marker <= 0xEF and marker not in KEPT_APP) or marker == COMMENT):
            out += jpeg[i:i + 2 + length]
        i += 2 + length
    return jpeg
