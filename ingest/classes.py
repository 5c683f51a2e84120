"""What dosereg takes in: the storage SOP classes of the table in docs/study-record.md.

The listener accepts exactly these at association negotiation (plus Verification); the
folder import skips DICOM files of any other class the same way, before reading them whole.
"""

from __future__ import annotations

ACCEPTED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.67": "X-Ray Radiation Dose SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.73": "Patient Radiation Dose SR Storage",  # quarantined until parsed
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",  # Philips dose screens
}


def meta_sop_class(head: bytes) -> str | None:
    """Media Storage SOP Class UID (0002,0002) from the start of a DICOM file, if there is one.

    ``head`` is the first bytes of the file (the file meta group is explicit VR little endian).
    """
    if len(head) < 144 or head[128:132] != b"DICM":
        return None
    pos, end = 132, len(head)
    while pos + 8 <= end:
        group = int.from_bytes(head[pos:pos + 2], "little")
        elem = int.from_bytes(head[pos + 2:pos + 4], "little")
        if group != 0x0002:
            return None
        vr = head[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            if pos + 12 > end:
                return None
            length = int.from_bytes(head[pos + 8:pos + 12], "little")
            value_at = pos + 12
        else:
            length = int.from_bytes(head[pos + 6:pos + 8], "little")
            value_at = pos + 8
        if elem == 0x0002:
            if value_at + length > end:
                return None
            return head[value_at:value_at + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = value_at + length
    return None
