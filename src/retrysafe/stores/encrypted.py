"""Encryption at rest (`?encryption_key_env=NAME` on any store URL): outcomes sealed with
AES-256-GCM, bound to their record (docs/encryption.md)."""

from retrysafe._encryption import Keyring, UnreadableRecord
from retrysafe.stores._async.encrypted import AsyncEncryptedStore
from retrysafe.stores._sync.encrypted import EncryptedStore

__all__ = ["AsyncEncryptedStore", "EncryptedStore", "Keyring", "UnreadableRecord"]
