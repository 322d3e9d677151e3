"""OPC UA server settings of a PLC (``opcua:`` in plant.yaml): port, security, users and roles, trust, history.

Defaults follow conventions.md §6.1 for a demo plant: a None endpoint and Basic256Sha256 Sign and
SignAndEncrypt, anonymous read access, no operator users (so nobody can write until one is configured).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from gateway.common.configfile import StrictModel


class SecurityPolicy(StrEnum):
    """Endpoint policies a PLC may offer. Basic128Rsa15 and Basic256 are deprecated (SHA-1; OPC 10000-7
    §6.6.163) and deliberately absent."""

    NONE = "None"
    BASIC256SHA256_SIGN = "Basic256Sha256_Sign"
    BASIC256SHA256_SIGN_ENCRYPT = "Basic256Sha256_SignAndEncrypt"
    AES128_SIGN = "Aes128Sha256RsaOaep_Sign"
    AES128_SIGN_ENCRYPT = "Aes128Sha256RsaOaep_SignAndEncrypt"
    AES256_SIGN = "Aes256Sha256RsaPss_Sign"
    AES256_SIGN_ENCRYPT = "Aes256Sha256RsaPss_SignAndEncrypt"


class Role(StrEnum):
    VIEWER = "viewer"  # read, browse, subscribe, history
    OPERATOR = "operator"  # + write setpoints and call commands


DEFAULT_POLICIES = (
    SecurityPolicy.NONE,
    SecurityPolicy.BASIC256SHA256_SIGN,
    SecurityPolicy.BASIC256SHA256_SIGN_ENCRYPT,
)


class OpcUaUser(StrictModel):
    name: str = Field(min_length=1, max_length=64)
    password: SecretStr
    role: Role = Role.VIEWER


class OpcUaServerConfig(StrictModel):
    enabled: bool = True
    port: int = Field(ge=1, le=65535)
    security_policies: tuple[SecurityPolicy, ...] = Field(default=DEFAULT_POLICIES, min_length=1)
    allow_anonymous: bool = True
    # Anonymous sessions get this role; "operator" lets any client write (bench / closed lab only).
    anonymous_role: Literal["viewer", "operator"] = "viewer"
    users: tuple[OpcUaUser, ...] = ()
    # Client certificates: validated against <pki>/trusted/certs unless auto_accept (demo mode,
    # conventions.md §6.1: "Auto-accept only in demo mode"). Rejected ones are copied to rejected/certs.
    auto_accept: bool = False
    # Overrides <data_dir>/pki/<plc id>; a relative path is taken relative to data_dir.
    pki_dir: str | None = None
    # Analog variables keep this many seconds of history for HistoryRead; 0 turns history off.
    history_window_s: float = Field(default=0.0, ge=0.0, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _unique_users(self) -> OpcUaServerConfig:
        names = [user.name for user in self.users]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate OPC UA user names: {', '.join(duplicates)}")
        if not self.allow_anonymous and not self.users:
            raise ValueError("allow_anonymous is false and no users are configured: nobody could connect")
        return self

    @property
    def needs_certificate(self) -> bool:
        return any(policy is not SecurityPolicy.NONE for policy in self.security_policies)
