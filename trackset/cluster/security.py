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

:func:`write_secrets` also writes what the Prefect API needs: its auth string
(``prefect-auth``), which the server (``PREFECT_SERVER_API_AUTH_STRING``), the CLI and every
worker (``PREFECT_API_AUTH_STRING``) read from that file, never from a committed file or a
command line; and its HTTPS certificate (``api-tls/``), which ``deployments/server.sh`` serves
so that the auth string, parameters and logs never cross the network in clear, and whose CA
every client trusts (``PREFECT_API_SSL_CERT_FILE``). Every secret file is created 0600 and
never overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
import socket
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

AUTH_FILE = "prefect-auth"
"""The Prefect API's auth string, in the secrets folder (``user:password``, one line)."""

TLS_DIR = "tls"
"""The cluster's certificates, in the secrets folder (:class:`TlsFiles`)."""

API_TLS_DIR = "api-tls"
"""The Prefect API's HTTPS certificate, in the secrets folder (:class:`TlsFiles`): the server
shows ``cert.pem`` and ``key.pem``; ``ca.pem`` is the file its clients trust
(``PREFECT_API_SSL_CERT_FILE``)."""

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


def default_api_hosts() -> list[str]:
    """The names clients use for the Prefect API on this host: its host name, its fully
    qualified name, and loopback (``localhost``, ``127.0.0.1``); without repeats."""
    return list(
        dict.fromkeys(name for name in (socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1") if name)
    )


def write_secrets(directory: Path, api_hosts: Sequence[str] | None = None) -> tuple[list[Path], list[Path]]:
    """Make the secrets of :mod:`this module <trackset.cluster.security>` that ``directory``
    lacks: the Prefect auth string, the cluster's certificates and the Prefect API's.

    Existing files are kept (running it again is harmless; delete a file or folder to renew
    it), so a folder on a shared filesystem is made once and read by every host. The folders
    are 0700, the auth string and the private keys 0600 whatever the umask.

    Args:
        directory: the secrets folder.
        api_hosts: the host names and IP addresses clients use to reach the Prefect API
            (``https://NAME:4200/api``), each a subjectAltName of its certificate; None:
            :func:`default_api_hosts`. Only read when the API's certificate is made.

    Returns:
        The files written, and the files that were there already.

    Raises:
        FileExistsError: some files of a certificate folder are there and others not: they
            would not match.
        ValueError: an API host is neither an IP address nor a host name (nothing is written).
    """
    alt_names = _alt_names(default_api_hosts() if api_hosts is None else api_hosts)
    directory = directory.expanduser()
    _private_dir(directory)
    written, kept = [], []
    auth = directory / AUTH_FILE
    if auth.exists():
        kept.append(auth)
    else:
        _write_private(auth, f"trackset:{secrets.token_urlsafe(32)}\n".encode())
        written.append(auth)
    for folder, make in ((TLS_DIR, _cluster_certificates), (API_TLS_DIR, lambda: _api_certificates(alt_names))):
        made, there = _certificate_folder(directory / folder, make)
        written += made
        kept += there
    return written, kept


def api_certificate_hosts(cert: Path) -> list[str]:
    """The host names and IP addresses a certificate is valid for (its subjectAltNames), to
    tell a user whose kept certificate lacks a name they now ask for."""
    from cryptography import x509

    names = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    return [*names.value.get_values_for_type(x509.DNSName), *map(str, names.value.get_values_for_type(x509.IPAddress))]


_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """A subjectAltName per host: an IP address as such (clients match ``https://10.0.0.1``
    against IP entries only), anything else as a DNS name."""
    from cryptography import x509

    if not hosts:
        raise ValueError("the Prefect API's certificate needs at least one host name or IP address")
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not _HOST_NAME.fullmatch(host):
                raise ValueError(f"API host {host!r} is neither an IP address nor a host name") from None
            names.append(x509.DNSName(host))
    return names


def _certificate_folder(folder: Path, make: Callable[[], tuple[bytes, bytes, bytes]]) -> tuple[list[Path], list[Path]]:
    """The CA, certificate and key of :class:`TlsFiles` in ``folder``: kept when all are
    there, else made with ``make`` (the key first, 0600; the others 0644).

    Returns:
        The files written, and the files that were there already.
    """
    files = TlsFiles.in_dir(folder)
    present = [path for path in files.all() if path.exists()]
    if len(present) == len(files.all()):
        return [], present
    if present:
        raise FileExistsError(
            f"{folder} holds {', '.join(p.name for p in present)} but not all of ca.pem, cert.pem, "
            "key.pem: delete the folder to make a new set"
        )
    _private_dir(folder)
    ca, cert, key = make()
    _write_private(files.key, key)
    _write_private(files.cert, cert, mode=0o644)
    _write_private(files.ca, ca, mode=0o644)
    return [files.ca, files.cert, files.key], []


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


def _cluster_certificates() -> tuple[bytes, bytes, bytes]:
    """The Dask cluster's CA certificate, and a certificate and key it signed, all PEM; the
    CA's key is dropped.

    Nobody can sign another member afterwards: a new set replaces the whole folder. Dask
    checks the chain, not host names (members are reached by IP address), so the names
    are only labels.
    """
    from cryptography import x509

    ca, ca_key = _new_ca("trackset cluster CA")
    cert, key = _new_leaf(ca, ca_key, "trackset cluster member", [x509.DNSName("trackset-cluster")])
    return _pem(ca, cert, key)


def _api_certificates(alt_names: list[x509.GeneralName]) -> tuple[bytes, bytes, bytes]:
    """The Prefect API's CA certificate (what clients trust), and the server's certificate
    for ``alt_names`` and its key, all PEM; the CA's key is dropped.

    A CA of its own, not the cluster's: Dask accepts any certificate its CA signed, so a
    server key signed by it would let whoever holds that key join the cluster. Clients check
    the host name they dial against ``alt_names`` (Python's ``ssl``, which httpx and
    websockets use); the key usages and key identifiers are there for OpenSSL's strict
    verification (``VERIFY_X509_STRICT``, Python 3.13's default).
    """
    ca, ca_key = _new_ca("trackset Prefect API CA")
    cert, key = _new_leaf(ca, ca_key, "trackset Prefect API", alt_names, server=True)
    return _pem(ca, cert, key)


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now, now + datetime.timedelta(days=CERT_DAYS)


def _name(common: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _new_ca(common: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that signs end certificates only (``path_length=0``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    start, until = _validity()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca, ca_key


def _new_leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common: str,
    alt_names: list[x509.GeneralName],
    server: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate ``ca`` signs for a new key; ``server``: usable for TLS servers only (key
    usage and extended key usage say so, as strict clients ask)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    start, until = _validity()
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(_key_usage(digital_signature=True), critical=True).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def _key_usage(digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(ca: x509.Certificate, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes, bytes]:
    from cryptography.hazmat.primitives import serialization

    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem
