"""Endpoint security, users and roles, and the PKI folders of one PLC's OPC UA server.

Layout (OPC 10000-12 / .NET stack convention, conventions.md §6.1)::

    <data_dir>/pki/<plc id>/own/certs/server_cert.der    generated self-signed on first start
                            own/private/server_key.pem   mode 0600
                            trusted/certs, trusted/crl   client certificates (DER) and CRLs we accept
                            issuer/certs, issuer/crl     CA certificates: not trusted by themselves
                            rejected/certs               refused client certificates land here, so an
                                                         admin can move them to trusted/certs

Roles: asyncua authorises per service type only (conventions.md §1.6), so the roles are enforced in
two places: the Call service is refused at the service level (``PlantRuleset``, BadUserAccessDenied),
writes are refused per node in ``writes.PlcAttributeService``. Node management services are refused to
every remote user.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import USER_TYPES, SimpleRoleRuleset, User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devices.opcua._ua import ObjectIds, Server, StatusCodes, nodeid
from devices.opcua.config import OpcUaServerConfig, Role, SecurityPolicy

log = logging.getLogger(__name__)

POLICY_TYPES: dict[SecurityPolicy, ua.SecurityPolicyType] = {
    SecurityPolicy.NONE: ua.SecurityPolicyType.NoSecurity,
    SecurityPolicy.BASIC256SHA256_SIGN: ua.SecurityPolicyType.Basic256Sha256_Sign,
    SecurityPolicy.BASIC256SHA256_SIGN_ENCRYPT: ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    SecurityPolicy.AES128_SIGN: ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    SecurityPolicy.AES128_SIGN_ENCRYPT: ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    SecurityPolicy.AES256_SIGN: ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    SecurityPolicy.AES256_SIGN_ENCRYPT: ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}


@dataclass(frozen=True)
class PkiLayout:
    root: Path

    @property
    def cert_file(self) -> Path:
        return self.root / "own" / "certs" / "server_cert.der"

    @property
    def key_file(self) -> Path:
        return self.root / "own" / "private" / "server_key.pem"

    @property
    def trusted_certs(self) -> Path:
        return self.root / "trusted" / "certs"

    @property
    def trusted_crl(self) -> Path:
        return self.root / "trusted" / "crl"

    @property
    def issuer_certs(self) -> Path:
        return self.root / "issuer" / "certs"

    @property
    def issuer_crl(self) -> Path:
        return self.root / "issuer" / "crl"

    @property
    def rejected_certs(self) -> Path:
        return self.root / "rejected" / "certs"

    def create(self) -> None:
        for folder in (
            self.cert_file.parent,
            self.key_file.parent,
            self.trusted_certs,
            self.trusted_crl,
            self.issuer_certs,
            self.issuer_crl,
            self.rejected_certs,
        ):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.key_file.parent, 0o700)


def pki_layout(config: OpcUaServerConfig, data_dir: Path, plc_id: str) -> PkiLayout:
    if config.pki_dir is None:
        return PkiLayout(data_dir / "pki" / plc_id)
    root = Path(config.pki_dir)
    return PkiLayout(root if root.is_absolute() else data_dir / root)


async def setup_certificate(server: Server, pki: PkiLayout, app_uri: str, plc_id: str) -> None:
    """Load the server certificate, generating a self-signed one (1 year) if missing or invalid."""
    pki.create()
    # The certificate's SAN carries the ApplicationUri, which clients check (OPC 10000-4 §6.1.3).
    await setup_self_signed_certificate(
        pki.key_file,
        pki.cert_file,
        app_uri,
        socket.gethostname(),
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        {
            "countryName": "DE",
            "organizationName": "TwinEdge",
            "commonName": f"TwinEdge PLC {plc_id}",
        },
    )
    os.chmod(pki.key_file, 0o600)
    await server.load_certificate(str(pki.cert_file))
    await server.load_private_key(str(pki.key_file))


class ClientCertificateValidator:
    """TRUSTED_VALIDATION against the PKI folders; a refused certificate is copied to rejected/certs.

    With ``auto_accept`` (demo mode) every certificate passing the time/URI/key-usage checks is
    copied to trusted/certs and accepted. The folders are re-read on every session, so a certificate
    an admin moves from rejected/ to trusted/ works without a restart.
    """

    def __init__(self, pki: PkiLayout, auto_accept: bool) -> None:
        self._pki = pki
        self._auto_accept = auto_accept

    def _has_trust(self) -> bool:
        return any(
            path.suffix.lower() in (".der", ".pem")
            for folder in (self._pki.trusted_certs, self._pki.issuer_certs)
            for path in folder.iterdir()
        )

    async def _validator(self) -> CertificateValidator:
        if self._auto_accept:
            return CertificateValidator(
                CertificateValidatorOptions.EXT_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
            )
        if not self._has_trust():
            # asyncua's TrustStore cannot be empty: with nothing trusted, nothing is.
            raise ServiceError(StatusCodes.BadCertificateUntrusted)
        store = TrustStore([self._pki.trusted_certs, self._pki.issuer_certs], [self._pki.trusted_crl])
        await store.load()
        return CertificateValidator(
            CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT, store
        )

    async def __call__(self, cert: x509.Certificate, app_description: ua.ApplicationDescription) -> None:
        try:
            validator = await self._validator()
            await validator.validate(cert, app_description)
        except Exception:
            self._store(cert, self._pki.rejected_certs)
            log.warning(
                "OPC UA: rejected client certificate of %s (copied to %s)",
                app_description.ApplicationUri,
                self._pki.rejected_certs,
            )
            raise
        if self._auto_accept:
            self._store(cert, self._pki.trusted_certs)

    @staticmethod
    def _store(cert: x509.Certificate, folder: Path) -> None:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(names[0].value) if names else "client"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in common_name)
        thumbprint = cert.fingerprint(cert.signature_hash_algorithm or _sha1()).hex()[:16]
        (folder / f"{safe}-{thumbprint}.der").write_bytes(cert.public_bytes(Encoding.DER))


def _sha1() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA1()  # a file-name thumbprint, not a signature


class PlantUserManager(UserManager):
    """Username/password users from config; anonymous sessions only if allowed.

    ``get_user`` is synchronous in asyncua; returning None makes ActivateSession fail with
    BadUserAccessDenied.
    """

    def __init__(self, config: OpcUaServerConfig) -> None:
        self._passwords = {user.name: user.password.get_secret_value().encode() for user in config.users}
        self._allow_anonymous = config.allow_anonymous

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is None:
            # X509 user tokens are not offered (identity_tokens), so no username means Anonymous;
            # ``certificate`` is then the secure channel's client certificate, not an identity.
            return User(role=UserRole.User, name=None) if self._allow_anonymous else None
        expected = self._passwords.get(username)
        given = password.encode() if isinstance(password, str) else (password or b"")
        # compare_digest even for unknown users, so timing does not reveal which names exist.
        if not hmac.compare_digest(expected or b"\0", given) or expected is None:
            log.warning("OPC UA: failed login for user %r", username)
            return None
        return User(role=UserRole.User, name=username)


class RoleResolver:
    """The plant role of an asyncua session user."""

    def __init__(self, config: OpcUaServerConfig) -> None:
        self._roles = {user.name: user.role for user in config.users}
        self._anonymous = Role(config.anonymous_role)

    def __call__(self, user: User) -> Role:
        if user.role is UserRole.Admin:  # the server's own internal session
            return Role.OPERATOR
        if user.name is None:
            return self._anonymous if user.role is UserRole.User else Role.VIEWER
        return self._roles.get(user.name, Role.VIEWER)


_CALL = nodeid(ObjectIds.CallRequest_Encoding_DefaultBinary)


class PlantRuleset(SimpleRoleRuleset):
    """Everyone authenticated may use the read/write/subscribe services; Call needs an operator."""

    def __init__(self, role_of: RoleResolver) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # asyncua leaves it unannotated
        self._allowed = {nodeid(type_id) for type_id in USER_TYPES}
        self._role_of = role_of

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        if action_type_id not in self._allowed:
            return False
        if action_type_id == _CALL:
            return self._role_of(user) is Role.OPERATOR
        return True


def identity_tokens(config: OpcUaServerConfig) -> list[type]:
    tokens: list[type] = [ua.UserNameIdentityToken] if config.users else []
    if config.allow_anonymous:
        tokens.insert(0, ua.AnonymousIdentityToken)
    return tokens
