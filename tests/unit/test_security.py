"""The secrets a user makes once: file modes, a certificate chain that holds, nothing overwritten."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trackset.cluster.security import TlsFiles, api_certificate_hosts, tls_config, write_secrets
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
    root, tls, api = tmp_path / "secrets", tmp_path / "secrets" / "tls", tmp_path / "secrets" / "api-tls"
    certificates = [folder / name for folder in (tls, api) for name in ("ca.pem", "cert.pem", "key.pem")]
    assert sorted(written) == sorted([root / "prefect-auth", *certificates])
    assert kept == []
    assert (mode(root), mode(tls), mode(api)) == (0o700, 0o700, 0o700)
    assert (mode(root / "prefect-auth"), mode(tls / "key.pem"), mode(api / "key.pem")) == (0o600, 0o600, 0o600)
    for folder in (tls, api):
        assert (mode(folder / "ca.pem"), mode(folder / "cert.pem")) == (0o644, 0o644)
        assert sorted(p.name for p in folder.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]  # no temporary left
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


def handshake(files: TlsFiles, trusted: Path | None, hostname: str) -> None:
    """A TLS handshake, in memory, of a server showing ``files``' certificate and a client as
    Prefect's (httpx and websockets: ``ssl.create_default_context(cafile=...)``, certifi's CAs
    without a file) dialling ``hostname``; raises ``ssl.SSLCertVerificationError`` if the
    client refuses the server."""
    import certifi

    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.cert, files.key)
    client_context = ssl.create_default_context(cafile=str(trusted) if trusted else certifi.where())
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(client_in, client_out, server_hostname=hostname)
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    done = {client: False, server: False}
    for _ in range(10):
        for side in (client, server):
            if not done[side]:
                try:
                    side.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_the_api_certificate_holds_for_the_names_asked_and_no_other(tmp_path):
    hosts = ["head.example.org", "head", "10.1.2.3", "127.0.0.1", "::1"]
    written, _ = write_secrets(tmp_path, api_hosts=hosts)
    files = TlsFiles.in_dir(tmp_path / "api-tls")
    assert {files.ca, files.cert, files.key} <= set(written)
    assert api_certificate_hosts(files.cert) == ["head.example.org", "head", "10.1.2.3", "127.0.0.1", "::1"]
    assert files.problems() == []
    for name in hosts:
        handshake(files, files.ca, name)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(files, files.ca, "other.example.org")
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        handshake(files, files.ca, "10.1.2.4")
    # A client without the trust file (certifi's CAs), or trusting the Dask cluster's CA, refuses it.
    for trusted in (None, tmp_path / "tls" / "ca.pem"):
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
            handshake(files, trusted, "head.example.org")


def test_the_api_certificate_names_this_host_by_default(tmp_path):
    write_secrets(tmp_path)
    names = api_certificate_hosts(tmp_path / "api-tls" / "cert.pem")
    assert names == list(dict.fromkeys([socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1"]))
    handshake(TlsFiles.in_dir(tmp_path / "api-tls"), tmp_path / "api-tls" / "ca.pem", socket.gethostname())


def test_the_api_certificate_is_kept_when_other_names_are_asked_later(tmp_path):
    write_secrets(tmp_path, api_hosts=["head"])
    before = (tmp_path / "api-tls" / "cert.pem").read_bytes()
    written, kept = write_secrets(tmp_path, api_hosts=["other"])
    assert written == [] and tmp_path / "api-tls" / "cert.pem" in kept
    assert (tmp_path / "api-tls" / "cert.pem").read_bytes() == before


def test_a_bad_api_host_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="'head; rm' is neither an IP address nor a host name"):
        write_secrets(tmp_path / "s", api_hosts=["head", "head; rm"])
    assert not (tmp_path / "s").exists()


def test_the_cli_makes_them_and_says_how_to_use_them(tmp_path, capsys):
    assert main(["secrets", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 's' / 'tls' / 'key.pem'}" in out
    assert f"cluster.tls_dir={tmp_path / 's' / 'tls'}" in out
    assert 'PREFECT_API_AUTH_STRING="$(cat' in out
    assert f"PREFECT_API_SSL_CERT_FILE={tmp_path / 's' / 'api-tls' / 'ca.pem'}" in out
    (tmp_path / "s" / "tls" / "cert.pem").unlink()
    assert main(["secrets", str(tmp_path / "s")]) == 2


def test_the_cli_names_the_api_hosts_and_says_when_a_kept_certificate_lacks_one(tmp_path, capsys):
    assert main(["secrets", str(tmp_path), "--api-host", "head", "--api-host", "10.0.0.1"]) == 0
    assert api_certificate_hosts(tmp_path / "api-tls" / "cert.pem") == ["head", "10.0.0.1"]
    assert "https://head:4200/api" in capsys.readouterr().out
    assert main(["secrets", str(tmp_path), "--api-host", "head", "--api-host", "gpu1"]) == 0
    out = capsys.readouterr().out
    assert f"kept  {tmp_path / 'api-tls' / 'cert.pem'}" in out
    assert "does not name gpu1" in out and f"delete {tmp_path / 'api-tls'}" in out
    assert main(["secrets", str(tmp_path / "new"), "--api-host", "a b"]) == 2


SERVER_SH = Path(__file__).resolve().parents[2] / "deployments" / "server.sh"


def server_sh(secrets: Path, host: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``deployments/server.sh HOST 4200`` with ``echo`` standing in for prefect and Python: it
    prints the server command it would run, and starts nothing."""
    environ = {"PATH": os.environ["PATH"], "HOME": str(secrets), "TRACKSET_SECRETS": str(secrets)}
    environ |= {"PREFECT": "echo", "PYTHON": "echo", **env}
    return subprocess.run([str(SERVER_SH), host, "4200"], env=environ, capture_output=True, text=True, timeout=30)


def test_server_sh_serves_https_with_the_api_certificate(tmp_path):
    write_secrets(tmp_path)
    for host in ("127.0.0.1", "0.0.0.0"):
        started = server_sh(tmp_path, host)
        assert started.returncode == 0, started.stderr
        command = started.stdout.split()
        assert command[:4] == ["-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
        assert command[command.index("--host") + 1] == host
        assert command[command.index("--ssl-certfile") + 1] == str(tmp_path / "api-tls" / "cert.pem")
        assert command[command.index("--ssl-keyfile") + 1] == str(tmp_path / "api-tls" / "key.pem")
    (tmp_path / "api-tls" / "key.pem").chmod(0o640)
    refused = server_sh(tmp_path, "127.0.0.1")
    assert refused.returncode == 2 and "key.pem is readable by other accounts (mode 640)" in refused.stderr


def test_server_sh_without_the_certificate_serves_http_on_loopback_only_unless_the_network_is_trusted(tmp_path):
    write_secrets(tmp_path)
    shutil.rmtree(tmp_path / "api-tls")  # secrets made before trackset made the API's certificate
    for host in ("127.0.0.1", "localhost", "::1"):
        started = server_sh(tmp_path, host)
        assert (started.returncode, started.stdout.split()[:4]) == (0, ["server", "start", "--host", host])
    refused = server_sh(tmp_path, "0.0.0.0")
    assert refused.returncode == 2 and refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert f"no {tmp_path / 'api-tls' / 'cert.pem'}" in line and "in clear" in line
    assert "trackset secrets" in line and "TRACKSET_CLUSTER__TRUSTED_NETWORK=true" in line
    trusted = server_sh(tmp_path, "0.0.0.0", TRACKSET_CLUSTER__TRUSTED_NETWORK="true")
    assert (trusted.returncode, trusted.stdout.split()[:4]) == (0, ["server", "start", "--host", "0.0.0.0"])
