"""TLS for the run's Dask cluster, and the secret files a user makes once.

Anyone who can open a connection to a Dask scheduler can run code as the user who started
its workers (``Client(address).run(os.system, ...)``): Dask has no accounts, only TLS with
certificates on both ends (``distributed.Security``; the scheduler, the workers and every
client must show a certificate signed by the cluster's CA). So:

- a cluster on several machines talks TLS with the certificates of :func:`write_secrets`
  (``trackset secrets DIR``, run once, on a shared filesystem every host sees); the flow
  finds them through ``cluster.tls_dir`` (:func:`tls_config`), ``dask scheduler`` and
  ``dask worker`` through their ``--tls-*`` options (README, "Several machines");
- the cluster a run starts on its own machine talks TLS too, with a certificate made for the
  run and held only in memory (:func:`temporary_tls_config`): another account on a shared
  head node reaches 127.0.0.1 as well as this one.

:func:`write_secrets` also writes the Prefect API's auth string (``prefect-auth``), which the
server (``PREFECT_SERVER_API_AUTH_STRING``), the CLI and every worker
(``PREFECT_API_AUTH_STRING``) read from that file, never from a committed file or a command
line. Every secret file is created 0600 and never overwritten.
"""

from __future__ import annotations

import datetime
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AUTH_FILE = "prefect-auth"
"""The Prefect API's auth string, in the secrets folder (``user:password``, one line)."""

TLS_DIR = "tls"
"""The cluster's certificates, in the secrets folder (:class:`TlsFiles`)."""

CERT_DAYS = 3650
"""Validity of the certificates: a certificate that expires ends every comm of a running
build at once, so it outlives any build; renew by deleting the folder and running again."""


@dataclass(frozen=True)
class TlsFiles:
    """A cluster's certificates in one folder: the CA that signs every member, and the
    certificate and private key that the scheduler, the workers and the clients all show.

    One key for every role: they all run as the same user, and whoever can read the key can
    join the cluster in any role anyway.

    Examples:
        >>> files = TlsFiles.in_dir(Path("/secrets/tls"))
        >>> files.ca.name, files.cert.name, files.key.name
        ('ca.pem', 'cert.pem', 'key.pem')
    """

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> TlsFiles:
        """The files :func:`write_secrets` writes into ``directory``."""
        return cls(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")

    def all(self) -> tuple[Path, Path, Path]:
        """The three paths, CA first."""
        return self.ca, self.cert, self.key

    def problems(self) -> list[str]:
        """What stops these files securing a cluster: a missing file, a key others can read."""
        missing = [str(path) for path in self.all() if not path.is_file()]
        if missing:
            return [f"missing {', '.join(missing)} (make them with: trackset secrets DIR)"]
        mode = stat.S_IMODE(self.key.stat().st_mode)
        if mode & 0o077:
            return [f"{self.key} is readable by other accounts (mode {mode:04o}): chmod 600 it"]
        return []


def tls_config(files: TlsFiles) -> dict[str, Any]:
    """Dask settings that make every comm of this process TLS with ``files``.

    Every ``Client``, ``Scheduler`` and ``Nanny`` made while they are set uses them (their
    ``Security()`` reads this config); ``require-encryption`` refuses a plain ``tcp://`` comm.

    Examples:
        >>> config = tls_config(TlsFiles.in_dir(Path("/s/tls")))
        >>> config["distributed.comm.require-encryption"], config["distributed.comm.tls.worker.key"]
        (True, '/s/tls/key.pem')
    """
    return _config(str(files.ca), str(files.cert), str(files.key))


def temporary_tls_config() -> dict[str, Any]:
    """Dask settings for TLS with a certificate made now and held only in memory (Dask's
    ``Security.temporary()``), for a cluster whose every member this process starts.

    The worker processes a ``Nanny`` spawns get this process's Dask config, so they hold the
    same certificate; nothing else does.
    """
    from distributed.security import Security

    security = Security.temporary()
    return _config(security.tls_ca_file, security.tls_client_cert, security.tls_client_key)


def _config(ca: str, cert: str, key: str) -> dict[str, Any]:
    """The Dask config keys of one CA, certificate and key for every role (paths or PEM text)."""
    config: dict[str, Any] = {"distributed.comm.require-encryption": True, "distributed.comm.tls.ca-file": ca}
    for role in ("scheduler", "worker", "client"):
        config[f"distributed.comm.tls.{role}.cert"] = cert
        config[f"distributed.comm.tls.{role}.key"] = key
    return config


def write_secrets(directory: Path) -> tuple[list[Path], list[Path]]:
    """Make the secrets of :mod:`this module <trackset.cluster.security>` that ``directory``
    lacks: the Prefect auth string and the cluster's certificates.

    Existing files are kept (running it again is harmless; delete a file to renew it), so a
    folder on a shared filesystem is made once and read by every host. The folders are 0700,
    the auth string and the private key 0600 whatever the umask.

    Returns:
        The files written, and the files that were there already.

    Raises:
        FileExistsError: some certificate files are there and others not: they would not match.
    """
    directory = directory.expanduser()
    _private_dir(directory)
    written, kept = [], []
    auth = directory / AUTH_FILE
    if auth.exists():
        kept.append(auth)
    else:
        _write_private(auth, f"trackset:{secrets.token_urlsafe(32)}\n".encode())
        written.append(auth)
    files = TlsFiles.in_dir(directory / TLS_DIR)
    present = [path for path in files.all() if path.exists()]
    if len(present) == len(files.all()):
        kept += present
    elif present:
        raise FileExistsError(
            f"{directory / TLS_DIR} holds {', '.join(p.name for p in present)} but not all of ca.pem, cert.pem, "
            "key.pem: delete the folder to make a new set"
        )
    else:
        _private_dir(directory / TLS_DIR)
        ca, cert, key = _certificates()
        _write_private(files.key, key)
        _write_private(files.cert, cert, mode=0o644)
        _write_private(files.ca, ca, mode=0o644)
        written += [files.ca, files.cert, files.key]
    return written, kept


def _private_dir(directory: Path) -> None:
    """``directory`` made 0700 if missing (an existing one keeps its mode: it may be ~/.config)."""
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        directory.chmod(0o700)  # mkdir's mode is masked by the umask; 0700 is what is asked


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` whole or not at all with ``mode`` from its first byte on: a temporary
    file created with that mode, fsynced, linked into place (never over an existing file),
    and the folder fsynced."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _certificates() -> tuple[bytes, bytes, bytes]:
    """A CA certificate, and a certificate and key it signed, all PEM; the CA's key is dropped.

    Nobody can sign another member afterwards: a new set replaces the whole folder. Dask
    checks the chain, not host names (members are reached by IP address), so the names
    are only labels.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    until = now + datetime.timedelta(days=CERT_DAYS)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("trackset cluster CA"))
        .issuer_name(name("trackset cluster CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("trackset cluster member"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("trackset-cluster")]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem
