"""The mesh CA and the certificates that authenticate sidecars and the control plane.

Identities are SPIFFE IDs in a URI SAN, rooted in the CA's trust domain (the
CA certificate carries ``spiffe://<trust-domain>`` as its own URI SAN, as the
SPIFFE X.509-SVID spec recommends for signing certificates):

* a sidecar: ``spiffe://<td>/ns/<namespace>/workload/<name>``.  Istio names the
  service account (``/sa/``); meshext names the workload, because snapshots are
  per workload (node id ``<name>.<namespace>``) and the mesh model has no
  service accounts: one identity, exactly one proxy configuration.
* the control plane: ``spiffe://<td>/meshext/control-plane`` (plus DNS/IP SANs
  for the addresses clients dial, for hostname checks);
* an operator running `meshext status`: ``spiffe://<td>/meshext/admin``.

Keys are ECDSA P-256 (Envoy, gRPC and OpenSSL all take them; fast to make),
written with mode 0600.  Lifetimes: CA 10 years, control plane 1 year,
sidecars and admin 90 days.  Nothing rotates certificates automatically yet:
`meshext control serve` re-issues files it manages when they are within
``RENEW_BEFORE`` of expiry, and Envoy reads its files at start.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshext.errors import MeshextError

DEFAULT_TRUST_DOMAIN = "cluster.local"
CONTROL_PLANE_PATH = "/meshext/control-plane"
ADMIN_PATH = "/meshext/admin"
CA_DAYS = 3650
SERVER_DAYS = 365
CLIENT_DAYS = 90
RENEW_BEFORE = datetime.timedelta(days=7)
# Names the control plane's certificate always covers: single-machine clients dial loopback.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

_CERTS_FIX = ("create them with `meshext control certs -o DIR [--workload NAME --namespace NS]` "
              "(or let `meshext control serve` create them in its --pki-dir)")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def spiffe_id(trust_domain: str, path: str) -> str:
    """The SPIFFE ID ``spiffe://<trust_domain><path>``."""
    return f"spiffe://{trust_domain}{path}"


def workload_path(name: str, namespace: str) -> str:
    """The SPIFFE path of a sidecar's identity: ``/ns/<namespace>/workload/<name>``."""
    return f"/ns/{namespace}/workload/{name}"


def workload_of(identity: str, trust_domain: str) -> tuple[str, str] | None:
    """(name, namespace) if ``identity`` is a sidecar's SPIFFE ID in ``trust_domain``."""
    prefix = f"spiffe://{trust_domain}/"
    if not identity.startswith(prefix):
        return None
    parts = identity[len(prefix):].split("/")
    if len(parts) != 4 or parts[0] != "ns" or parts[2] != "workload" or not parts[1] or not parts[3]:
        return None
    return parts[3], parts[1]


def uri_sans(cert: x509.Certificate) -> list[str]:
    """The certificate's URI subject alternative names."""
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return extension.value.get_values_for_type(x509.UniformResourceIdentifier)


def identity_of(cert: x509.Certificate) -> str:
    """The certificate's SPIFFE ID, or "" when it has none."""
    return next((uri for uri in uri_sans(cert) if uri.startswith("spiffe://")), "")


def _write_private(path: Path, data: bytes) -> None:
    """Write a key readable by its owner only (created 0600, never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class CertificateAuthority:
    """The mesh CA: its certificate and private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, trust_domain: str = DEFAULT_TRUST_DOMAIN, days: int = CA_DAYS) -> CertificateAuthority:
        """A new self-signed CA for ``trust_domain`` (a P-256 key), valid for ``days``."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshext"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"meshext mesh CA ({trust_domain})")])
        now = _now()
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> CertificateAuthority:
        """The CA in these PEM files, checked that the key belongs to the certificate."""
        cert = _load_certs(cert_file, "CA certificate")[0]
        key = _parse_key(_read(key_file, "CA key"), key_file, "CA key")
        _check_key_matches(cert, key, cert_file, key_file)
        return cls(cert, key)

    @property
    def trust_domain(self) -> str:
        """The trust domain the CA certificate names (its URI SAN)."""
        return trust_domain_of(self.cert)

    def issue(self, identity_path: str, *, hosts: Iterable[str] = (), days: int = CLIENT_DAYS,
              server: bool = False, not_before: datetime.datetime | None = None) -> tuple[bytes, bytes]:
        """A leaf certificate and its key (PEM) for SPIFFE path ``identity_path``.

        ``hosts`` become DNS/IP SANs; ``server`` certificates also have the
        serverAuth usage; every certificate has clientAuth."""
        key = ec.generate_private_key(ec.SECP256R1())
        identity = spiffe_id(self.trust_domain, identity_path)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity)]
        for host in dict.fromkeys(hosts):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        start = not_before or _now() - datetime.timedelta(minutes=5)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshext"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, identity_path.rsplit("/", 1)[-1])]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return _cert_pem(cert), _key_pem(key)


def trust_domain_of(ca_cert: x509.Certificate) -> str:
    """The trust domain a CA certificate names in its ``spiffe://<trust-domain>`` URI SAN."""
    for uri in uri_sans(ca_cert):
        if uri.startswith("spiffe://") and "/" not in uri[len("spiffe://"):].rstrip("/"):
            return uri[len("spiffe://"):].rstrip("/")
    raise MeshextError("the CA certificate names no trust domain (a URI SAN spiffe://<trust-domain>)",
                       where="CA certificate", fix=_CERTS_FIX)


# -- files --------------------------------------------------------------------
def _read(path: Path, what: str, where: str | None = None) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise MeshextError(f"{what} {path} does not exist", where=where, fix=_CERTS_FIX) from None
    except OSError as error:
        raise MeshextError(f"cannot read {what} {path}: {error.strerror}", where=where,
                           fix="check the path and that this user may read it") from None


def _load_certs(path: Path, what: str, where: str | None = None) -> list[x509.Certificate]:
    data = _read(path, what, where)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise MeshextError(f"{path} holds no PEM certificate", where=where, fix=f"point it at the {what} (PEM)")
    return certs


def _parse_key(data: bytes, path: Path, what: str, where: str | None = None) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise MeshextError(f"{path} holds no unencrypted PEM private key", where=where,
                           fix=f"point it at the {what} (PEM, not password-protected)") from None
    return key  # type: ignore[return-value]


def _public_bytes(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_key_matches(cert: x509.Certificate, key: object, cert_file: Path, key_file: Path,
                       where: str | None = None) -> None:
    if _public_bytes(cert.public_key()) != _public_bytes(key.public_key()):  # type: ignore[attr-defined]
        raise MeshextError(f"the key {key_file} does not belong to the certificate {cert_file}", where=where,
                           fix="pass the key that was issued with this certificate")


@dataclass(frozen=True)
class TLSFiles:
    """CA bundle, certificate and key files of one party, with the option names that set them."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    ca_option: str = "--ca-file"
    cert_option: str = "--cert-file"
    key_option: str = "--key-file"

    def load(self) -> TLSMaterial:
        """Read and check the files: readable PEM, certificate signed by the CA,
        valid now, key matching the certificate, a SPIFFE ID present."""
        cas = _load_certs(self.ca_file, "CA certificate", self.ca_option)
        cert = _load_certs(self.cert_file, "certificate", self.cert_option)[0]
        key_pem = _read(self.key_file, "private key", self.key_option)
        key = _parse_key(key_pem, self.key_file, "private key", self.key_option)
        issuer = next((ca for ca in cas if _issued_by(cert, ca)), None)
        if issuer is None:
            raise MeshextError(f"the certificate {self.cert_file} is not signed by the CA in {self.ca_file}",
                               where=self.cert_option,
                               fix="use a certificate issued by this mesh's CA (`meshext control certs "
                                   "-o DIR` with the same DIR), or the CA that issued it")
        now = _now()
        if cert.not_valid_after_utc <= now:
            raise MeshextError(f"the certificate {self.cert_file} expired on "
                               f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC", where=self.cert_option,
                               fix="issue a new one with `meshext control certs` (it re-issues expiring files)")
        if cert.not_valid_before_utc > now:
            raise MeshextError(f"the certificate {self.cert_file} is not valid before "
                               f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC", where=self.cert_option,
                               fix="check this machine's clock, or issue a new certificate")
        _check_key_matches(cert, key, self.cert_file, self.key_file, where=self.key_option)
        identity = identity_of(cert)
        if not identity:
            raise MeshextError(f"the certificate {self.cert_file} has no SPIFFE ID (URI SAN spiffe://...)",
                               where=self.cert_option, fix=_CERTS_FIX)
        return TLSMaterial(files=self, ca_pem=b"".join(_cert_pem(ca) for ca in cas), cert_pem=_cert_pem(cert),
                           key_pem=key_pem, identity=identity,
                           trust_domain=trust_domain_of(issuer))


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class TLSMaterial:
    """Checked PEM bytes of one party, and what its certificate says."""

    files: TLSFiles
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    identity: str
    trust_domain: str

    @property
    def control_plane_identity(self) -> str:
        """The control plane's SPIFFE ID in this party's trust domain."""
        return spiffe_id(self.trust_domain, CONTROL_PLANE_PATH)


# -- a directory of mesh certificates ----------------------------------------------
def default_pki_directory() -> Path:
    """$MESHEXT_PKI_DIR, else $XDG_DATA_HOME/meshext/pki (~/.local/share/meshext/pki)."""
    if os.environ.get("MESHEXT_PKI_DIR"):
        return Path(os.environ["MESHEXT_PKI_DIR"])
    return Path(os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")) / "meshext" / "pki"


@dataclass(frozen=True)
class PKIDirectory:
    """What `meshext control certs -o DIR` writes (and `serve`, `proxy` and `status` read):

    ca.pem, ca-key.pem                        the mesh CA
    control-plane.pem, control-plane-key.pem  the control plane (server)
    admin.pem, admin-key.pem                  `meshext status`
    workloads/<namespace>/<name>.pem, ...-key.pem   one per sidecar
    """

    root: Path

    @property
    def ca_file(self) -> Path:
        """The mesh CA certificate."""
        return self.root / "ca.pem"

    @property
    def ca_key_file(self) -> Path:
        """The mesh CA's private key."""
        return self.root / "ca-key.pem"

    def control_plane(self) -> TLSFiles:
        """The control plane's files."""
        return TLSFiles(self.ca_file, self.root / "control-plane.pem", self.root / "control-plane-key.pem")

    def admin(self) -> TLSFiles:
        """The files of the admin identity (`meshext status`)."""
        return TLSFiles(self.ca_file, self.root / "admin.pem", self.root / "admin-key.pem")

    def workload(self, name: str, namespace: str) -> TLSFiles:
        """The files of the sidecar of workload ``namespace/name``."""
        base = self.root / "workloads" / namespace
        return TLSFiles(self.ca_file, base / f"{name}.pem", base / f"{name}-key.pem")

    def ensure(self, *, hosts: Iterable[str] = (), workloads: Iterable[tuple[str, str]] = (),
               trust_domain: str | None = None, client_days: int = CLIENT_DAYS) -> list[Path]:
        """Create what is missing: the CA, the control plane's certificate (SANs:
        loopback names + ``hosts``), the admin certificate and one per (name,
        namespace) workload.  A certificate that is expiring, not from this CA,
        or (control plane) missing a host is issued again.  A new CA is for
        ``trust_domain`` (default cluster.local); an existing one must match it
        when given.  Returns the files written."""
        written: list[Path] = []
        if self.ca_file.exists() or self.ca_key_file.exists():
            ca = CertificateAuthority.load(self.ca_file, self.ca_key_file)
            if trust_domain is not None and ca.trust_domain != trust_domain:
                raise MeshextError(f"the CA in {self.root} is for trust domain {ca.trust_domain!r}, "
                                   f"not {trust_domain!r}", where="--trust-domain",
                                   fix=f"pass --trust-domain {ca.trust_domain}, or use another directory")
        else:
            ca = CertificateAuthority.create(trust_domain or DEFAULT_TRUST_DOMAIN)
            self.root.mkdir(parents=True, exist_ok=True)
            _write_private(self.ca_key_file, _key_pem(ca.key))
            self.ca_file.write_bytes(_cert_pem(ca.cert))
            written += [self.ca_file, self.ca_key_file]
        server_hosts = [*LOOPBACK_HOSTS, *hosts]
        # (files, SPIFFE path, DNS/IP SANs, days, serverAuth): a sidecar is also the server of
        # mTLS from its peers, so its certificate carries serverAuth too (as Istio's do).
        wanted = [(self.control_plane(), CONTROL_PLANE_PATH, server_hosts, SERVER_DAYS, True),
                  (self.admin(), ADMIN_PATH, [], client_days, False)]
        wanted += [(self.workload(name, namespace), workload_path(name, namespace), [], client_days, True)
                   for name, namespace in workloads]
        for files, path, names, days, server in wanted:
            if _usable(files, ca, names, server):
                continue
            cert_pem, key_pem = ca.issue(path, hosts=names, days=days, server=server)
            _write_private(files.key_file, key_pem)
            files.cert_file.write_bytes(cert_pem)
            written += [files.cert_file, files.key_file]
        return written


def _usable(files: TLSFiles, ca: CertificateAuthority, hosts: list[str], server: bool) -> bool:
    """An existing certificate from this CA, valid for a while yet, covering ``hosts``
    (and allowed to authenticate a server when ``server``)."""
    if not (files.cert_file.exists() and files.key_file.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
    except ValueError:
        return False
    if not _issued_by(cert, ca.cert) or cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return False
    if server and not _has_server_auth(cert):
        return False  # e.g. a sidecar certificate issued before sidecars served mTLS
    if not hosts:
        return True
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    covered = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    return all(str(_normalised(host)) in covered for host in hosts)


def _has_server_auth(cert: x509.Certificate) -> bool:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True  # no EKU extension: any usage
    return ExtendedKeyUsageOID.SERVER_AUTH in usages


def _normalised(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host
