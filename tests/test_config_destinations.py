"""``[[registry.destinations]]`` and ``[review]``: parsed into typed settings, every mistake named."""

from __future__ import annotations

from pathlib import Path

import pytest

from dosereg.conf.config import (
    DICOM_SR_CLASSES,
    ConfigError,
    DestinationSettings,
    default_config,
    load_config,
)
from dosereg.registry_export.destinations import NoDestinationError, require_destinations

DICOM = '[[registry.destinations]]\nname = "acr"\nkind = "dicom"\nae_title = "DIRLINK"\nhost = "gw.example.org"\nport = 104\n'
HTTPS = ('[[registry.destinations]]\nname = "api"\nkind = "https"\nurl = "https://registry.example.org/api"\n'
         'token_env = "REGISTRY_TOKEN"\n')
FOLDER = '[[registry.destinations]]\nname = "outbox"\nkind = "folder"\npath = "/srv/outbox"\n'


def load(tmp_path: Path, text: str) -> object:
    f = tmp_path / "site.toml"
    f.write_text(text)
    return load_config(f)


def test_packaged_defaults_have_no_destination_and_review_required() -> None:
    cfg = default_config()
    assert cfg.registry.destinations == () and cfg.review.required is True
    with pytest.raises(NoDestinationError) as exc:
        require_destinations(cfg)
    assert "registry.destinations" in str(exc.value) and str(cfg.path) in str(exc.value)


def test_the_three_kinds_with_their_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[listener]\nae_title = "SITE_DOSE"\n[registry]\ndate_precision = "month"\n'
               + DICOM + HTTPS + FOLDER + "[review]\nrequired = false\n")
    dicom, https, folder = require_destinations(cfg)  # type: ignore[arg-type]
    assert dicom == DestinationSettings(name="acr", kind="dicom", ae_title="DIRLINK", host="gw.example.org", port=104,
                                        calling_ae_title="SITE_DOSE")  # the listener's AE title by default
    assert dicom.objects == "deidentified" and dicom.sop_classes == DICOM_SR_CLASSES
    assert dicom.storage_commitment is False and dicom.commitment_timeout_s == 60.0 and dicom.timeout_s == 60.0
    assert (dicom.max_attempts, dicom.retry_backoff_s, dicom.retry_total_s) == (3, 2.0, 300.0)
    assert (https.url, https.token_env) == ("https://registry.example.org/api", "REGISTRY_TOKEN")
    assert folder.path == "/srv/outbox"
    assert cfg.registry.date_precision == "month" and cfg.review.required is False  # type: ignore[attr-defined]


def test_every_key_of_a_dicom_destination(tmp_path: Path) -> None:
    cfg = load(tmp_path, DICOM + 'calling_ae_title = "ME"\nobjects = "original"\nstorage_commitment = true\n'
               'commitment_timeout_s = 5\ntimeout_s = 10\nmax_attempts = 5\nretry_backoff_s = 0\nretry_total_s = 60\n'
               'sop_classes = ["1.2.840.10008.5.1.4.1.1.88.67"]\ntls_certificate = "c.pem"\n'
               'tls_private_key = "k.pem"\ntls_ca_certificates = "ca.pem"\n')
    (d,) = cfg.registry.destinations  # type: ignore[attr-defined]
    assert (d.calling_ae_title, d.objects, d.storage_commitment, d.commitment_timeout_s) == ("ME", "original", True, 5.0)
    assert (d.timeout_s, d.max_attempts, d.retry_backoff_s, d.retry_total_s) == (10.0, 5, 0.0, 60.0)
    assert d.sop_classes == ("1.2.840.10008.5.1.4.1.1.88.67",)
    assert (d.tls_certificate, d.tls_private_key, d.tls_ca_certificates) == ("c.pem", "k.pem", "ca.pem")


@pytest.mark.parametrize("text, words", [
    ('[[registry.destinations]]\nname = "x"\nkind = "ftp"\n', "registry.destinations[1].kind must be one of dicom, https, folder"),
    ('[[registry.destinations]]\nname = "x"\n', "registry.destinations[1].kind is required"),
    (FOLDER + '[[registry.destinations]]\nname = "y"\nkind = "folder"\npth = "/x"\n',
     "unknown key registry.destinations[2].pth"),
    (FOLDER + 'url = "https://x.org"\n', "not a key of kind 'folder': registry.destinations[1].url"),
    (DICOM.replace('port = 104\n', ''), "registry.destinations[1].port is required for kind dicom"),
    (HTTPS.replace('token_env = "REGISTRY_TOKEN"\n', ''), "registry.destinations[1].token_env is required for kind https"),
    ('[[registry.destinations]]\nkind = "folder"\npath = "/x"\n', "registry.destinations[1].name is required"),
    (DICOM + DICOM, "registry.destinations[2].name 'acr' is already the name of registry.destinations[1]"),
    (DICOM.replace("104", "70000"), "registry.destinations[1].port must be between 1 and 65535"),
    (DICOM.replace("104", "0"), "registry.destinations[1].port must be between 1 and 65535"),
    (DICOM.replace("104", '"104"'), "registry.destinations[1].port must be a whole number"),
    (DICOM + 'objects = "anonymous"\n', "registry.destinations[1].objects must be one of deidentified, original"),
    (DICOM + 'storage_commitment = "yes"\n', "registry.destinations[1].storage_commitment must be true or false"),
    (DICOM.replace('"DIRLINK"', '"A_TITLE_LONGER_THAN_16"'), "registry.destinations[1].ae_title must be 1-16"),
    (DICOM + 'sop_classes = ["1.2.840.10008.5.1.4.1.1.88.067"]\n', "sop_classes holds a value that is not a UID"),
    (DICOM + 'sop_classes = []\n', "sop_classes must name at least one SOP class"),
    (DICOM + 'tls_certificate = "c.pem"\n', "tls_certificate and tls_private_key must be set together"),
    (HTTPS.replace("https://registry", "http://registry"), "registry.destinations[1].url must be an https:// URL"),
    (HTTPS.replace("https://", "https://user:pw@"), "must not hold credentials"),
    (HTTPS.replace("/api", ":99999/api"), "registry.destinations[1].url is not a URL"),
    (HTTPS + "timeout_s = 0\n", "registry.destinations[1].timeout_s must be between 0.1 and 86400"),
    (HTTPS + "max_attempts = 0\n", "registry.destinations[1].max_attempts must be between 1 and 100"),
    ('[registry]\ndestinations = "acr"\n', "registry.destinations must be an array of tables"),
    ("[review]\nrequired = 1\n", "review.required must be true or false"),
    ("[review]\nrequird = true\n", "unknown key review.requird"),
])
def test_mistakes_name_the_key_and_the_file(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    assert words in str(exc.value) and str(f) in str(exc.value)


def test_the_packaged_file_documents_every_key() -> None:
    text = Path(default_config().path).read_text()
    for key in ("[[registry.destinations]]", 'kind = "dicom"', 'kind = "https"', 'kind = "folder"', "ae_title",
                "calling_ae_title", "objects", "sop_classes", "storage_commitment", "commitment_timeout_s",
                "tls_certificate", "tls_private_key", "tls_ca_certificates", "url", "token_env", "path",
                "timeout_s", "max_attempts", "retry_backoff_s", "retry_total_s", "[review]"):
        assert key in text, key


def test_destinations_in_the_cli_config_error_path(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    f = tmp_path / "bad.toml"
    f.write_text(FOLDER.replace('kind = "folder"', 'kind = "floppy"'))
    proc = run_cli("extract", "--config", str(f), "whatever.dcm")
    assert proc.returncode == 2 and "registry.destinations[1].kind" in proc.stderr and str(f) in proc.stderr
