"""What dosereg takes from other libraries beyond their documented API, checked so that an
upgrade that changes it fails here, by name, instead of silently changing results.

The listener's uses of pynetdicom internals are checked in tests/test_listener_limits.py
(``test_pynetdicom_still_has_what_the_guard_relies_on``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from dosereg.extract.concepts import snomed_key, srt_to_sct


def test_pydicom_still_ships_the_snomed_mapping_file_srt_to_sct_reads() -> None:
    """``extract.concepts.srt_to_sct`` reads pydicom's ``sr/_snomed_dict.py`` by file path (so
    that `dosereg extract` does not import all of pydicom): the file must still be there and
    still hold ``mapping["SRT"]`` with the concepts dose reports use."""
    spec = importlib.util.find_spec("pydicom")
    assert spec is not None and spec.origin is not None
    assert (Path(spec.origin).parent / "sr" / "_snomed_dict.py").is_file()
    from pydicom.sr._snomed_dict import mapping

    assert srt_to_sct() == dict(mapping["SRT"])
    m = srt_to_sct()
    assert len(m) > 5000
    assert (m["T-D1100"], m["T-D4000"], m["T-A0100"]) == ("69536005", "113345001", "12738006")  # head, abdomen, brain
    assert snomed_key("T-D1100", "SRT") == snomed_key("69536005", "SCT") == ("69536005", "SCT")


def test_every_tag_the_byte_reader_reads_as_a_sequence_is_one_in_pydicoms_dictionary() -> None:
    """In implicit VR the byte reader decides from ``SQ_TAGS`` which elements are sequences;
    the list is checked against the standard's data dictionary (as pydicom ships it), so a
    tag of another VR can never be read as a sequence (it listed (0040,1008) Confidentiality
    Code, an LO, before this test)."""
    from pydicom.datadict import dictionary_VR

    from dosereg.extract.dicom_bytes import SQ_TAGS

    assert {f"{t:08X}": dictionary_VR(t) for t in SQ_TAGS if dictionary_VR(t) != "SQ"} == {}
    assert 0x0040A730 in SQ_TAGS and 0x0040A043 in SQ_TAGS  # Content, Concept Name Code Sequence
