"""A real PACS for the reconcile tests and bench: Orthanc (Debian package ``orthanc``) and dcmtk's
``dcmqrscp``, each started on a free loopback port with a generated configuration, loaded
through its DICOM port with generated CT studies, stopped by pid.

Studies (:func:`pacs_studies`): ``kind`` is ``rdsr`` (CT images and an X-Ray Radiation Dose
SR), ``screen`` (CT images and a Philips "Dose Info" Secondary Capture screen, plus a plain SC
image that is not a dose screen, which must never be fetched) or ``images`` (CT images only).
The dose objects are the project's sample objects (``sample_dicom/``) with the study's own UIDs.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from .conftest import stop_by_pid
from .synthetic import UID_ROOT

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_dicom"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
RDSR = "1.2.840.10008.5.1.4.1.1.88.67"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (Debian package {package}; .ci/run installs it)")
    return path


# -- studies ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PacsStudy:
    i: int
    kind: str  # rdsr | screen | images
    day: str  # YYYYMMDD

    @property
    def uid(self) -> str:
        return f"{UID_ROOT}.50.{self.i}"

    @property
    def accession(self) -> str:
        return f"RC{self.i:06d}"

    def uid_of(self, what: int, n: int = 1) -> str:
        return f"{UID_ROOT}.5{what}.{self.i}.{n}"

    @property
    def dose_uid(self) -> str | None:
        return {"rdsr": self.uid_of(3), "screen": self.uid_of(4)}.get(self.kind)


def _template(name: str) -> Dataset:
    return pydicom.dcmread(SAMPLES / f"{name}.dcm")


_TEMPLATES: dict[str, Dataset] = {}


def _own(ds: Dataset, study: PacsStudy, series_uid: str, sop_uid: str, station: str) -> Dataset:
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.AccessionNumber = study.accession
    ds.StudyDate = study.day
    ds.StudyTime = f"{8 + study.i % 10:02d}{study.i % 60:02d}00"
    ds.PatientID = f"RCPAT{study.i:06d}"
    ds.PatientName = f"Recon^Patient{study.i:06d}"
    ds.StudyDescription = "CT CHEST W CONTRAST"
    ds.StationName = station
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    return ds


def _ct_image(study: PacsStudy, n: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CT_IMAGE
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesDescription = "Thorax 1.0 B30f"
    ds.SeriesNumber = 2
    ds.InstanceNumber = n
    ds.Manufacturer = "Siemens"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(32)
    return _own(ds, study, study.uid_of(1), study.uid_of(1, n), f"CT{study.i % 3}")


def _sc_image(study: PacsStudy) -> Dataset:
    """A Secondary Capture that is not a dose screen (a 3D rendering): never to be fetched."""
    ds = _ct_image(study, 1)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SC_IMAGE
    ds.Modality = "OT"
    ds.ImageType = ["DERIVED", "SECONDARY", "VRT"]
    ds.SeriesDescription = "VRT Bone"
    ds.SeriesNumber = 900
    return _own(ds, study, study.uid_of(2), study.uid_of(2, 1), f"CT{study.i % 3}")


def study_datasets(study: PacsStudy, images: int = 2) -> list[Dataset]:
    """The objects of one study, as a PACS holds them."""
    out = [_ct_image(study, n) for n in range(1, images + 1)]
    if study.kind == "rdsr":
        out.append(rdsr_of(study))
    elif study.kind == "screen":
        t = _TEMPLATES.setdefault("ct_philips_dose_info", _template("ct_philips_dose_info"))
        ds = _own(t.copy(), study, study.uid_of(4, 0), study.uid_of(4), f"CT{study.i % 3}")
        out += [ds, _sc_image(study)]
    return out


def rdsr_of(study: PacsStudy) -> Dataset:
    t = _TEMPLATES.setdefault("ct_siemens_single_source", _template("ct_siemens_single_source"))
    return _own(t.copy(), study, study.uid_of(3, 0), study.uid_of(3), f"CT{study.i % 3}")


def encoded(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def pacs_studies(n: int, days: list[str], kinds: tuple[str, ...] = ("rdsr", "screen", "images")) -> list[PacsStudy]:
    return [PacsStudy(i, kinds[i % len(kinds)], days[i % len(days)]) for i in range(n)]


def store(port: int, ae_title: str, datasets: Iterator[Dataset] | list[Dataset]) -> int:
    """C-STORE every dataset to ``ae_title`` at 127.0.0.1:``port`` on one association; how many stored."""
    ae = AE(ae_title="LOADER")
    for uid in (CT_IMAGE, SC_IMAGE, RDSR):
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established, f"cannot associate with {ae_title} on {port}"
    n = 0
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            assert status and status.Status == 0, f"C-STORE of {ds.SOPInstanceUID}: {status}"
            n += 1
    finally:
        assoc.release()
    return n


def wait_echo(port: int, ae_title: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 2
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"peer exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except OSError:
            time.sleep(0.1)
            continue
        assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
        if assoc.is_established:
            assoc.release()
            return
        time.sleep(0.2)
    raise AssertionError(f"peer did not answer a C-ECHO within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


# -- the peers ----------------------------------------------------------------------------
@dataclass
class Peer:
    """A PACS process on 127.0.0.1:``port`` with AE title ``ae_title``."""

    proc: subprocess.Popen[bytes]
    port: int
    ae_title: str
    folder: Path
    log_path: Path
    destinations: dict[str, int] = field(default_factory=dict)

    def stop(self) -> None:
        stop_by_pid(self.proc)

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pacs_toml(self, retrieve: str = "c-get", **extra: object) -> str:
        lines = [f'[pacs]\nae_title = "{self.ae_title}"\nhost = "127.0.0.1"\nport = {self.port}\n'
                 f'retrieve = "{retrieve}"\ntimeout_s = 20\n']
        lines += [f"{k} = {json.dumps(v)}\n" for k, v in extra.items()]
        return "".join(lines)


def start_orthanc(folder: Path, listener_ae: str = "DOSEREG", listener_port: int = 11112,
                  limit_find_results: int = 0, more_modalities: dict[str, tuple[str, int]] | None = None) -> Peer:
    """Orthanc with a generated configuration: DICOM only (no HTTP), dosereg's listener known for
    C-MOVE (and ``more_modalities``: name -> (AE title, port) on 127.0.0.1)."""
    exe = need("Orthanc", "orthanc")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "dosereg-tests", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "Plugins": [], "HttpServerEnabled": False, "DicomServerEnabled": True, "DicomAet": "ORTHANC",
        "DicomPort": port, "DicomCheckCalledAet": False, "DicomCheckModalityHost": False,
        "DicomModalities": {"dosereg": [listener_ae, "127.0.0.1", listener_port],
                            **{k: [ae, "127.0.0.1", p] for k, (ae, p) in (more_modalities or {}).items()}},
        "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True,
        "UnknownSopClassAccepted": False, "LimitFindResults": limit_find_results, "LimitFindInstances": 0,
        "StorageAccessOnFind": "Always", "ConcurrentJobs": 2, "SaveJobs": False, "DicomScpTimeout": 30,
        "StableAge": 1, "LogExportedResources": False, "KeepAlive": True, "HttpPort": free_port(),
    }
    cfg_path = folder / "orthanc.json"
    cfg_path.write_text(json.dumps(config, indent=1))
    return _launch([exe, str(cfg_path)], port, "ORTHANC", folder, {listener_ae: listener_port})


def start_dcmqrscp(folder: Path, listener_ae: str = "DOSEREG", listener_port: int = 11112) -> Peer:
    """dcmtk's dcmqrscp (a stricter peer: C-FIND and C-MOVE, no C-GET of ours) with a generated
    dcmqrscp.cfg; loaded through its DICOM port like Orthanc."""
    exe = need("dcmqrscp", "dcmtk")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "db").mkdir(exist_ok=True)
    port = free_port()
    cfg = (
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        "HostTable BEGIN\n"
        f"dosereg = ({listener_ae}, 127.0.0.1, {listener_port})\n"
        "HostTable END\nVendorTable BEGIN\nVendorTable END\n"
        "AETable BEGIN\n"
        f"DCMQRSCP {folder / 'db'} RW (2000, 1024mb) ANY\n"
        "AETable END\n"
    )
    cfg_path = folder / "dcmqrscp.cfg"
    cfg_path.write_text(cfg)
    return _launch([exe, "-c", str(cfg_path), "--disable-get", str(port)], port, "DCMQRSCP", folder,
                   {listener_ae: listener_port})


def _launch(cmd: list[str], port: int, ae_title: str, folder: Path, destinations: dict[str, int]) -> Peer:
    """Start a peer, its output in ``<folder>/<ae title>.log``, and wait until it answers C-ECHO
    (stopped by its process id if it never does)."""
    log_path = folder / f"{ae_title.lower()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    peer = Peer(proc, port, ae_title, folder, log_path, destinations)
    try:
        wait_echo(port, ae_title, proc, log_path)
    except BaseException:
        peer.stop()
        raise
    return peer


def load(peer: Peer, studies: list[PacsStudy], images: int = 2) -> int:
    """Every object of ``studies`` stored into ``peer`` through its DICOM port."""
    return store(peer.port, peer.ae_title, (ds for s in studies for ds in study_datasets(s, images)))
