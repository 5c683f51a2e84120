"""The identifying UIDs of a received C-STORE, checked before anything is kept.

A UID names the object in the catalog, in the spool's ledger and in the quarantine's reason
file; one with a newline, a slash or several values would forge lines there or collide.
PS3.5 9.1: characters ``0-9`` and ``.`` only, at most 64 characters, components not empty
(no leading, trailing or doubled ``.``), one value (VR UI, VM 1 for these attributes).
Leading zeros in a component are also forbidden by PS3.5 but are seen in real devices and
harm nothing here, so they are let through.

Checked: the C-STORE request's Affected SOP Instance and Class UIDs, and the dataset's own
SOP Instance UID (0008,0018), SOP Class UID (0008,0016) and Study Instance UID (0020,000D),
read from the start of the encoded dataset only (the top-level elements up to (0020,000D));
for a deflated dataset from at most :data:`INFLATE_PREFIX` inflated bytes of it.
"""

from __future__ import annotations

import zlib
from io import BytesIO
from typing import Any

from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

#: A deflated dataset is inflated at most this far to find its UIDs (they come first).
INFLATE_PREFIX = 1 << 20
MAX_UID_LENGTH = 64

_DATASET_UIDS = {
    Tag(0x0008, 0x0016): "SOP Class UID (0008,0016)",
    Tag(0x0008, 0x0018): "SOP Instance UID (0008,0018)",
    Tag(0x0020, 0x000D): "Study Instance UID (0020,000D)",
}
_LAST = Tag(0x0020, 0x000D)


def uid_problem(value: Any) -> str | None:
    """Why ``value`` (a str, bytes or a multi-valued element's list) is not one valid UID.

    Short: the reason goes into the C-STORE response's Error Comment (LO, 64 characters).
    """
    if value is None:
        return "missing"
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, (str, bytes))):
        return f"{len(list(value))} values, not 1"
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    text = text.rstrip("\0 ")
    if "\\" in text:
        return f"{text.count(chr(92)) + 1} values, not 1"
    if not text:
        return "empty"
    if len(text) > MAX_UID_LENGTH:
        return f"{len(text)} chars, over {MAX_UID_LENGTH}"
    for char in text:
        if char not in "0123456789.":
            shown = f"'{char}'" if " " < char < "\x7f" and char != "\\" else f"0x{ord(char):02X}"
            return f"char {shown} not in [0-9.]"  # no backslash: it would split the Error Comment
    if "" in text.split("."):
        return "empty component"
    return None


def _prefix(stream: bytes, syntax: str) -> bytes:
    if syntax != DeflatedExplicitVRLittleEndian:
        return stream
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(stream, INFLATE_PREFIX)
    except zlib.error:
        return b""


def dataset_uids(stream: bytes, syntax: str) -> dict[str, Any]:
    """The raw values of the dataset's identifying UIDs present in its first elements.

    Values are the element values as pydicom reads them (a list when several); an element
    that cannot be reached cheaply (an unreadable or cut-off prefix) is simply absent.
    """
    data = _prefix(stream, syntax)
    implicit = syntax == ImplicitVRLittleEndian
    little = syntax != ExplicitVRBigEndian

    def stop(tag: BaseTag, vr: str | None, length: int) -> bool:
        return bool(tag > _LAST)

    found: dict[str, Any] = {}
    try:
        ds = read_dataset(BytesIO(data), implicit, little, stop_when=stop,
                          specific_tags=list(_DATASET_UIDS))
        for tag, name in _DATASET_UIDS.items():
            if tag in ds:
                found[name] = ds[tag].value
    except Exception:  # noqa: BLE001 - a damaged prefix: the processing side reports it
        return found
    return found


def store_problem(request_uids: dict[str, Any], stream: bytes, syntax: str) -> str | None:
    """The first invalid identifying UID of a C-STORE, as "<name>: <reason>", or None."""
    for name, value in request_uids.items():
        problem = uid_problem(value)
        if problem:
            return f"{name}: {problem}"
    for name, value in dataset_uids(stream, syntax).items():
        problem = uid_problem(value)
        if problem:
            return f"{name}: {problem}"
    return None


__all__ = ["INFLATE_PREFIX", "dataset_uids", "store_problem", "uid_problem"]
