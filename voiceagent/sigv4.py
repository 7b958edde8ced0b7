"""botocore's SigV4, minus what it redoes for every request: deriving the signing key (four
HMACs that depend only on the secret, the day, the region and the service), re-preparing
the whole request to read back the body we gave it, and building the list of the headers
signed, and their names, a second time for the Authorization header.

Everything else (the canonical request, the string to sign, the headers set and their
order) is still botocore's own ``SigV4Auth.add_auth``, so the bytes signed and sent are the
ones botocore would send; ``tests/test_sigv4.py`` compares the two at a fixed clock. The
changes override public names (``AWSRequest.body``, ``SigV4Auth.signature``,
``headers_to_sign``, ``signed_headers``): the first two with what the SigV4 specification
fixes, the last two with botocore's own answer kept for as long as what it was made from is
unchanged. A botocore that stopped calling any of them would only lose the saving, and one
that changed what they mean would fail that test.

Header lists are read with ``email.message.Message.raw_items`` (botocore's ``HTTPHeaders``
is one): the pairs as stored, where ``items`` runs each through the email policy again.
The standard library calls it internal, for its generator; it has been there unchanged
since Python 3.3, and without it every signature here fails, not just some.
"""

from __future__ import annotations

import hashlib
import hmac

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
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
    """``SigV4Auth`` whose signing key comes from ``keys``, and whose list of the headers
    signed is made once for the headers it is made from."""

    def __init__(self, credentials: ReadOnlyCredentials, service_name: str,
                 region_name: str, keys: SigningKeys) -> None:
        super().__init__(credentials, service_name, region_name)
        self._keys = keys
        self._listed: tuple[object, HTTPHeaders, object] | None = None
        self._named: tuple[object, str] | None = None

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        # add_auth asks twice, for the canonical request and for the Authorization header,
        # and each answer is a new email-style header map. The kept one is given back only
        # while the request's URL and headers, and the map itself, are what they were
        # (``raw_items`` copies the list without parsing each header again), so in whatever
        # order botocore asks, it gets what it would have built.
        key = (request.url, tuple(request.headers.raw_items()))
        listed = self._listed
        if listed is not None and listed[0] == key \
                and tuple(listed[1].raw_items()) == listed[2]:
            return listed[1]
        headers = super().headers_to_sign(request)
        self._listed = (key, headers, tuple(headers.raw_items()))
        return headers

    def signed_headers(self, headers_to_sign: HTTPHeaders) -> str:
        # asked twice of the same map, as above; kept by the map's contents
        key = tuple(headers_to_sign.raw_items())
        named = self._named
        if named is not None and named[0] == key:
            return named[1]
        signed: str = super().signed_headers(headers_to_sign)
        self._named = (key, signed)
        return signed

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

    def header_list(self) -> list[tuple[str, str]]:
        """The headers as set, in order: ``items`` would run each value through the email
        policy again on the way out."""
        return list(self.headers.raw_items())
