#!/usr/bin/env python3
"""Benchmark the registry destinations (docs/destinations.md).

1. DICOM: objects per second to a local dcmtk ``storescp`` with the ``dicom`` kind
   (``objects = "original"`` and ``"deidentified"``) against dcmtk's own ``storescu``
   sending the same files to the same ``storescp`` in the same run (one association each;
   target: at least half storescu's rate).
2. HTTPS: a synthetic 10,000-study batch folder (``studies.parquet``, ``events.parquet``,
   ``submission.json`` of realistic sizes, and its manifest) through the ``https`` kind to
   the tests' HTTPS registry on loopback; seconds, MB/s, the peak of Python allocations while
   uploading (streamed: bounded whatever the batch's size) and the ratio to the ``folder``
   kind placing the same batch on local disk.

    python bench/send.py [--objects 200] [--studies 10000] [--repeat 2]

Everything is written to a temporary folder and removed; peers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import replace
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dosereg.registry_export.destinations import Parcel, ParcelObject, deliver  # noqa: E402
from tests.send_peers import (  # noqa: E402
    BATCH,
    FACILITY,
    SECRET,
    RegistryServer,
    StoreSCP,
    dest,
)

SOURCE = ROOT / "sample_dicom" / "ct_siemens_single_source.dcm"


def copies(out: Path, n: int) -> list[ParcelObject]:
    """``n`` copies of the sample dose report, each its own study (new Study/Series/SOP UIDs)."""
    import pydicom
    from pydicom.uid import generate_uid

    raw = SOURCE.read_bytes()
    out.mkdir(parents=True)
    objects = []
    for i in range(n):
        ds = pydicom.dcmread(BytesIO(raw))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"obj{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        objects.append(ParcelObject(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID), path))
    return objects


def timed_storescu(port: int, files: list[Path]) -> float:
    exe = shutil.which("storescu")
    assert exe is not None
    start = time.perf_counter()
    r = subprocess.run([exe, "-aet", "DOSEREG", "-aec", "DIRLINK", "127.0.0.1", str(port), *map(str, files)],
                       capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=600)
    elapsed = time.perf_counter() - start
    assert r.returncode == 0, r.stderr[-2000:]
    return elapsed


def bench_dicom(tmp: Path, n: int, repeat: int) -> None:
    from dosereg.registry_export.deid import Pseudonymizer

    if shutil.which("storescp") is None or shutil.which("storescu") is None:
        print("dicom: skipped (dcmtk's storescp/storescu not installed)")
        return
    objects = copies(tmp / "objects", n)
    parcel = Parcel(FACILITY, BATCH, tmp, tuple(objects), Pseudonymizer(SECRET), "day")
    best: dict[str, float] = {}
    for r in range(repeat):
        for what in ("storescu", "original", "deidentified"):
            with StoreSCP(tmp / f"gateway-{what}-{r}") as scp:
                if what == "storescu":
                    elapsed = timed_storescu(scp.port, [o.path for o in objects])
                else:
                    d = dest("dicom", ae_title="DIRLINK", host="127.0.0.1", port=scp.port, calling_ae_title="DOSEREG",
                             objects=what, timeout_s=60.0, max_attempts=1)
                    start = time.perf_counter()
                    delivery = deliver(d, parcel)
                    elapsed = time.perf_counter() - start
                    assert delivery.state == "acknowledged", delivery.last_error
                got = len(list((tmp / f"gateway-{what}-{r}").iterdir()))
                assert got == n, f"{what}: {got} of {n} objects arrived"
            best[what] = min(best.get(what, float("inf")), elapsed)
            shutil.rmtree(tmp / f"gateway-{what}-{r}")
    base = n / best["storescu"]
    print(f"dicom: {n} dose SRs of {SOURCE.stat().st_size} bytes, one association, best of {repeat}")
    for what in ("storescu", "original", "deidentified"):
        rate = n / best[what]
        print(f"  {what:<13} {rate:8.1f} objects/s  {best[what]:7.2f} s  ratio to storescu {rate / base:5.2f}")


def synthetic_batch(root: Path, studies: int) -> Path:
    """A batch folder of realistic size: one row per study, three events per study."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "registry" / FACILITY / BATCH
    folder.mkdir(parents=True)
    rng = range(studies)
    uid = [f"2.25.{int(hashlib.sha256(str(i).encode()).hexdigest()[:30], 16)}" for i in rng]
    pq.write_table(pa.table({
        "study_instance_uid": uid, "study_date": [f"2024-03-{1 + i % 28:02d}" for i in rng],
        "modality": ["CT"] * studies, "sex": ["F" if i % 2 else "M" for i in rng], "age_years": [i % 90 for i in rng],
        "station_name": [f"S{i % 7:015X}" for i in rng], "total_dlp_mGycm": [100.0 + (i % 977) * 0.37 for i in rng],
        "study_description": [f"CT CHEST ABD PELVIS W CONTRAST {i % 13}" for i in rng],
        "registry_code": ["G9327"] * studies, "completeness": ["complete"] * studies,
    }), folder / "studies.parquet")
    ev = range(studies * 3)
    pq.write_table(pa.table({
        "study_instance_uid": [uid[i // 3] for i in ev],
        "irradiation_event_uid": [f"{uid[i // 3]}.{i % 3}" for i in ev],
        "acquisition_type": [("spiral", "constant_angle", "stationary")[i % 3] for i in ev],
        "ctdivol_mGy": [1.0 + (i % 251) * 0.1 for i in ev], "dlp_mGycm": [10.0 + (i % 1009) * 0.5 for i in ev],
        "phantom": ["body32"] * len(ev), "kvp_kV": [120.0] * len(ev), "acquisition_protocol": ["Thorax"] * len(ev),
    }), folder / "events.parquet")
    with open(folder / "submission.json", "w", encoding="utf-8") as fh:
        fh.write('{"schema": "dosereg.registry-submission/1", "studies": [\n')
        for i in rng:
            code = {"value": "P5-08000", "scheme": "SRT", "meaning": "Computed Tomography X-Ray"}
            study = {"schema": "dosereg.registry-study/1", "study_instance_uid": uid[i],
                     "study_date": f"2024-03-{1 + i % 28:02d}", "study_time": "10:15:30",
                     "study_description": "CT CHEST ABDOMEN PELVIS WITH CONTRAST", "modality": "CT",
                     "requested_procedure_description": "CT CHEST ABD PELVIS W", "procedure_codes": [code],
                     "patient": {"sex": "F", "age_years": i % 90, "weight_kg": 70.0, "height_m": 1.7},
                     "equipment": {"manufacturer": "SIEMENS", "model": "SOMATOM Definition AS+",
                                   "station_name": f"S{i % 7:015X}", "serial_number": "SN" + "A" * 30,
                                   "software_versions": "syngo CT VA48A", "device_observer_uid": uid[i] + ".9"},
                     "dose_objects": [{"sop_instance_uid": uid[i] + ".3", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.67",
                                       "kind": "rdsr", "received_at": "2024-03-05T10:20:00Z"}],
                     "report": {"procedure_reported": code, "has_intent": code, "start_datetime": "2024-03-05T10:16:10",
                                "end_datetime": "2024-03-05T10:19:00", "source_of_dose_information": code},
                     "total_events": 3, "total_dlp_mGycm": 612.3, "reported_total_dlp_mGycm": 612.3,
                     "events": [{"irradiation_event_uid": f"{uid[i]}.{k}", "acquisition_protocol": "Thorax Routine",
                                 "target_region": code, "acquisition_type": "spiral", "acquisition_type_code": code,
                                 "procedure_context": None, "start_datetime": "2024-03-05T10:16:10",
                                 "exposure_time_s": 4.7, "scanning_length_mm": 420.0,
                                 "nominal_single_collimation_mm": 0.6, "nominal_total_collimation_mm": 38.4,
                                 "pitch_factor": 1.2, "number_of_xray_sources": 1,
                                 "sources": [{"id": "A", "kvp_kV": 120.0, "max_tube_current_mA": 300.0,
                                              "tube_current_mA": 200.0, "exposure_time_per_rotation_s": 0.5}],
                                 "ctdivol_mGy": 5.1 + k, "phantom": "body32", "dlp_mGycm": 200.0 + k, "ssde_mGy": 7.0,
                                 "water_equivalent_diameter_mm": 280.0, "effective_dose_mSv": None,
                                 "phantom_code": code, "dose_check": None, "is_timing_run": False,
                                 "ctdivol_mGy_body32": 5.1 + k, "dlp_mGycm_body32": 200.0 + k} for k in range(3)],
                     "completeness": {"status": "complete", "missing": [], "invalid": [], "warnings": []},
                     "classification": {"patient_study": True, "rt_planning": False, "reasons": []},
                     "flags": {"registry_code": "G9327", "registry_reasons": ["complete dose report"],
                               "nomenclature_code": "G9321", "nomenclature_reasons": ["mapped: CT CHEST ABD PELVIS"]}}
            fh.write(("," if i else "") + json.dumps(study) + "\n")
        fh.write("]}\n")
    files = []
    for name in ("studies.parquet", "events.parquet", "submission.json"):
        data = (folder / name).read_bytes()
        files.append({"name": name, "rows": studies, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    (folder / "manifest.json").write_text(json.dumps({
        "schema": "dosereg.manifest/1", "facility_id": FACILITY, "batch_id": BATCH,
        "created_at": "2024-03-05T10:15:30.000000Z", "files": files, "pseudonyms_changed_at": None}, indent=1) + "\n")
    return folder


def bench_https(tmp: Path, studies: int, repeat: int) -> None:
    import trustme

    from dosereg.registry_export.deid import Pseudonymizer

    folder = synthetic_batch(tmp / "batch", studies)
    size = sum(p.stat().st_size for p in folder.iterdir())
    parcel = Parcel(FACILITY, BATCH, folder, (), Pseudonymizer(SECRET), "day")
    ca = trustme.CA()
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    os.environ["DOSEREG_BENCH_TOKEN"] = "bench-token-" + "x" * 32
    https_best, folder_best, peak = float("inf"), float("inf"), 0
    for r in range(repeat):
        with RegistryServer(tmp / f"registry-{r}", ca, os.environ["DOSEREG_BENCH_TOKEN"]) as server:
            d = dest("https", url=server.url, token_env="DOSEREG_BENCH_TOKEN", tls_ca_certificates=str(ca_file),
                     timeout_s=60.0, max_attempts=1)
            tracemalloc.start()
            start = time.perf_counter()
            delivery = deliver(d, parcel)
            elapsed = time.perf_counter() - start
            peak = max(peak, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            assert delivery.state == "acknowledged", delivery.last_error
        https_best = min(https_best, elapsed)
        shutil.rmtree(tmp / f"registry-{r}")
        d = replace(dest("folder", path=str(tmp / f"outbox-{r}")), max_attempts=1)
        start = time.perf_counter()
        assert deliver(d, parcel).state == "acknowledged"
        folder_best = min(folder_best, time.perf_counter() - start)
        shutil.rmtree(tmp / f"outbox-{r}")
    mb = size / 1e6
    print(f"https: a {studies}-study batch, {mb:.1f} MB in 4 files, best of {repeat}")
    print(f"  https   {https_best:7.2f} s  {mb / https_best:7.1f} MB/s  peak Python allocations while uploading "
          f"{peak / 1e6:.1f} MB ({peak / size:.1%} of the batch)")
    print(f"  folder  {folder_best:7.2f} s  {mb / folder_best:7.1f} MB/s  (read back and fsynced)")
    print(f"  https / folder time: {https_best / folder_best:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=200)
    ap.add_argument("--studies", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--only", choices=("dicom", "https"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dosereg-bench-send-") as tmp:
        if args.only in (None, "dicom"):
            bench_dicom(Path(tmp) / "dicom", args.objects, args.repeat)
        if args.only in (None, "https"):
            bench_https(Path(tmp) / "https", args.studies, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
