"""Azure credentials from configuration: a connection string parsed once, and secrets kept out of error text.

No Azure SDK here: `AzureStore` builds both its SDK client and its direct putter from one
`ConnectionString`, and redacts every StoreError message with `redact`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from aggregator.errors import ConfigError
from aggregator.storage.azure_put import Auth, Sas, SharedKey

# Connection-string fields and URL parameters that carry credentials.
_SECRET_PATTERNS = (
    re.compile(r"(AccountKey=)[^;]*", re.IGNORECASE),
    re.compile(r"(SharedAccessSignature=)[^;]*", re.IGNORECASE),
    re.compile(r"([?&]sig=)[^&\s;]*", re.IGNORECASE),
)

#: What `UseDevelopmentStorage=true` stands for: Azurite's documented development account.
DEV_ACCOUNT_NAME = "devstoreaccount1"
DEV_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEV_BLOB_ENDPOINT = f"http://127.0.0.1:10000/{DEV_ACCOUNT_NAME}"
DEFAULT_ENDPOINT_SUFFIX = "core.windows.net"


@dataclass(frozen=True)
class ConnectionString:
    """The parts of a storage connection string the store uses: where, and which credential."""

    account_url: str
    account_name: str
    account_key: str | None = field(default=None, repr=False)
    sas: str | None = field(default=None, repr=False)

    def sdk_credential(self) -> dict[str, str] | str:
        """The credential for the SDK's client: the shared key, else the SAS."""
        if self.account_key:
            return {"account_name": self.account_name, "account_key": self.account_key}
        return self.sas or ""

    def auth(self) -> Auth:
        """The same credential for the direct putter."""
        if self.account_key:
            return SharedKey(self.account_name, self.account_key)
        return Sas(self.sas or "")


def parse_connection_string(text: str) -> ConnectionString:
    """`Name=value;...` as the SDK reads it (names case-insensitive, `UseDevelopmentStorage=true`
    expanded); ConfigError, never quoting the string, when it cannot be used."""
    malformed = ConfigError("malformed Azure connection string")
    fields: dict[str, str] = {}
    for part in text.rstrip(";").split(";"):
        name, eq, value = part.partition("=")
        if not eq or not name.strip():
            raise malformed
        fields[name.strip().lower()] = value.strip()
    if fields.get("usedevelopmentstorage") == "true":
        return ConnectionString(DEV_BLOB_ENDPOINT, DEV_ACCOUNT_NAME, account_key=DEV_ACCOUNT_KEY)
    name = fields.get("accountname", "")
    key = fields.get("accountkey") or None
    sas = (fields.get("sharedaccesssignature") or "").lstrip("?") or None
    endpoint = fields.get("blobendpoint")
    if not endpoint and name:
        protocol = fields.get("defaultendpointsprotocol", "https")
        endpoint = f"{protocol}://{name}.blob.{fields.get('endpointsuffix', DEFAULT_ENDPOINT_SUFFIX)}"
    if not endpoint or (key and not name) or not (key or sas):
        raise malformed
    if key:
        try:
            base64.b64decode(key, validate=True)
        except ValueError:
            raise malformed from None
    return ConnectionString(endpoint.rstrip("/"), name, account_key=key, sas=sas)


def connection_string_secrets(connection_string: str) -> list[str]:
    """The values a StoreError must never show: the whole string and its credential fields."""
    secrets = [connection_string]
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() in ("accountkey", "sharedaccesssignature") and value:
            secrets.append(value)
    return secrets


def redact(text: str, secrets: Iterable[str]) -> str:
    """Remove known secrets and anything shaped like a key or SAS signature from `text`."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


def url_secrets(account_url: str) -> list[str]:
    """A SAS query string in the account URL is a credential too."""
    _, _, query = account_url.partition("?")
    return [query] if query else []
