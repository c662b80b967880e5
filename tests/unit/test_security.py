"""The secrets a user makes once: file modes, a certificate chain that holds, nothing overwritten."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trackset.cluster.security import TlsFiles, tls_config, write_secrets
from trackset.flows.cli import main


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask():
    """The laxest umask: nothing the secrets' modes rely on comes from it."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_secrets_are_private_whatever_the_umask(tmp_path, loose_umask):
    written, kept = write_secrets(tmp_path / "secrets")
    root, tls = tmp_path / "secrets", tmp_path / "secrets" / "tls"
    assert sorted(written) == sorted([root / "prefect-auth", tls / "ca.pem", tls / "cert.pem", tls / "key.pem"])
    assert kept == []
    assert (mode(root), mode(tls)) == (0o700, 0o700)
    assert (mode(root / "prefect-auth"), mode(tls / "key.pem")) == (0o600, 0o600)
    assert (mode(tls / "ca.pem"), mode(tls / "cert.pem")) == (0o644, 0o644)
    assert sorted(p.name for p in tls.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]  # no temporary left
    user, _, password = (root / "prefect-auth").read_text().strip().partition(":")
    assert user == "trackset" and len(password) >= 40


def test_the_certificate_is_signed_by_the_ca_and_matches_the_key(tmp_path):
    write_secrets(tmp_path)
    files = TlsFiles.in_dir(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    cert.verify_directly_issued_by(ca)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert files.problems() == []


def test_running_again_keeps_every_file(tmp_path):
    write_secrets(tmp_path)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    written, kept = write_secrets(tmp_path)
    assert written == [] and sorted(kept) == sorted(before)
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


def test_a_partial_set_of_certificates_is_refused_not_completed(tmp_path):
    write_secrets(tmp_path)
    (tmp_path / "tls" / "ca.pem").unlink()
    with pytest.raises(FileExistsError, match="delete the folder"):
        write_secrets(tmp_path)
    assert not (tmp_path / "tls" / "ca.pem").exists()


def test_problems_name_a_missing_file_and_a_key_others_can_read(tmp_path):
    files = TlsFiles.in_dir(tmp_path / "tls")
    assert "missing" in files.problems()[0] and "trackset secrets" in files.problems()[0]
    write_secrets(tmp_path)
    files.key.chmod(0o644)
    assert files.problems() == [f"{files.key} is readable by other accounts (mode 0644): chmod 600 it"]


def test_tls_config_gives_every_role_the_files_and_requires_encryption(tmp_path):
    files = TlsFiles.in_dir(tmp_path)
    config = tls_config(files)
    assert config["distributed.comm.require-encryption"] is True
    assert config["distributed.comm.tls.ca-file"] == str(files.ca)
    for role in ("scheduler", "worker", "client"):
        assert config[f"distributed.comm.tls.{role}.cert"] == str(files.cert)
        assert config[f"distributed.comm.tls.{role}.key"] == str(files.key)


def test_the_cli_makes_them_and_says_how_to_use_them(tmp_path, capsys):
    assert main(["secrets", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 's' / 'tls' / 'key.pem'}" in out
    assert f"cluster.tls_dir={tmp_path / 's' / 'tls'}" in out
    assert 'PREFECT_API_AUTH_STRING="$(cat' in out
    (tmp_path / "s" / "tls" / "cert.pem").unlink()
    assert main(["secrets", str(tmp_path / "s")]) == 2
