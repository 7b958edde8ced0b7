"""botocore's SigV4, minus two things it redoes for every request: deriving the signing key
(four HMACs that depend only on the secret, the day, the region and the service) and
re-preparing the whole request to read back the body we gave it.

Everything else (the canonical request, the string to sign, the headers set and their
order) is still botocore's own ``SigV4Auth.add_auth``, so the bytes signed and sent are the
ones botocore would send; ``tests/test_sigv4.py`` compares the two at a fixed clock. Both
changes override public names (``AWSRequest.body``, ``SigV4Auth.signature``) with what the
SigV4 specification fixes, not with how botocore computes them: a botocore that stopped
calling either would only lose the saving, and one that changed what they mean would fail
that test.
"""

from __future__ import annotations

import hashlib
import hmac

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials


class SigningKeys:
    """The last signing key derived, kept by the secret and the credential scope it was
    derived for. A refresh brings a new secret and the next signature derives a new key at
    once; the day changing changes the scope. Only one is kept: requests are signed with
    the current credentials, so an old key would only keep an old secret's derivative
    alive."""

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        # one tuple, read and replaced whole: a signer in another thread never pairs one
        # secret's key with another's scope
        self._kept: tuple[str, str, bytes] = ("", "", b"")

    def key(self, secret: str, scope: str) -> bytes:
        """The signing key for ``scope`` (``date/region/service/aws4_request``)."""
        kept_secret, kept_scope, key = self._kept
        if secret != kept_secret or scope != kept_scope or not key:
            key = f"AWS4{secret}".encode()
            for part in scope.split("/"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._kept = (secret, scope, key)
        return key


class KeptKeySigV4Auth(SigV4Auth):  # type: ignore[misc]
    """``SigV4Auth`` whose signing key comes from ``keys``."""

    def __init__(self, credentials: ReadOnlyCredentials, service_name: str,
                 region_name: str, keys: SigningKeys) -> None:
        super().__init__(credentials, service_name, region_name)
        self._keys = keys

    def signature(self, string_to_sign: str, request: AWSRequest) -> str:
        # The specification's string to sign: algorithm, timestamp, credential scope, hash.
        scope = string_to_sign.split("\n", 3)[2]
        key = self._keys.key(self.credentials.secret_key, scope)
        return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


class BytesRequest(AWSRequest):  # type: ignore[misc]
    """An ``AWSRequest`` of a body already in bytes, which is what is hashed: botocore's
    ``body`` prepares the whole request (URL, headers, length) to hand back the same bytes."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(method="POST", url=url, data=body, headers=headers)
        self._body = body

    @property
    def body(self) -> bytes | None:
        return self._body or None           # as botocore's: an empty body is no body
