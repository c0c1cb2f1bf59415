"""AWS Signature Version 4, checked on the server side (the EC2 query API's authentication).

A request is signed by the client (boto3, libcloud, the aws CLI) with a secret key the server
also knows; the server rebuilds the canonical request from what it received and compares the
signatures in constant time. Nothing here trusts a field of the request before the signature
matched, except to find which key to check it with.

What is checked, as AWS does: the ``Authorization`` header's algorithm, credential scope
(date, region, service ``ec2``, ``aws4_request``) and signed headers (``host`` and
``x-amz-date`` must be among them); the request time within ``max_skew`` of the server's
clock; the payload's SHA-256 (an ``x-amz-content-sha256`` header must equal it: no unsigned payloads).
A valid signed request can be sent again within the skew window, as with AWS itself: actions
that create something take a ``ClientToken`` (an idempotency key) for that reason.

Reference: https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "ec2"
MAX_SKEW = 15 * 60.0  # seconds, as AWS
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)


class SignatureError(Exception):
    """The request is not authenticated; ``code`` is the EC2 error code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SignedRequest:
    """What the signature covers, as the server received it."""

    method: str
    path: str  # the raw path, still percent-encoded
    query: str  # the raw query string
    headers: Mapping[str, str]  # case-insensitive lookups are done on lowercase names
    body: bytes


def _encode(value: str) -> str:
    return quote(value, safe="-_.~")


def canonical_query(raw: str) -> str:
    pairs = [(_encode(k), _encode(v)) for k, v in parse_qsl(raw, keep_blank_values=True)]
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def canonical_request(req: SignedRequest, signed_headers: list[str]) -> str:
    headers = {k.lower(): v for k, v in req.headers.items()}
    lines = []
    for name in signed_headers:
        value = headers.get(name)
        if value is None:
            raise SignatureError("AuthFailure", f"signed header {name!r} is not in the request")
        lines.append(f"{name}:{' '.join(value.split())}\n")
    payload = hashlib.sha256(req.body).hexdigest()
    claimed = headers.get("x-amz-content-sha256")
    if claimed is not None and claimed != payload:
        # Else the signature would cover the claimed hash, not the body that came.
        raise SignatureError("SignatureDoesNotMatch", "x-amz-content-sha256 is not the SHA-256 of the body "
                                                      "(unsigned payloads are not accepted)")
    path = quote(unquote(req.path or "/"), safe="/~")
    return "\n".join([req.method.upper(), path, canonical_query(req.query), "".join(lines), ";".join(signed_headers),
                      payload])


def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def verify(req: SignedRequest, secret_for: Callable[[str], str | None], region: str, *,
           now: float | None = None, max_skew: float = MAX_SKEW) -> str:
    """The access key id that signed ``req``; SignatureError (with the EC2 code) otherwise."""
    headers = {k.lower(): v for k, v in req.headers.items()}
    auth = headers.get("authorization")
    if not auth:
        raise SignatureError("AuthFailure", "the request is not signed: an Authorization header with AWS Signature "
                                            "Version 4 is required (no anonymous access)")
    m = _AUTH.match(auth.strip())
    if m is None:
        if auth.strip().startswith("AWS4-HMAC-SHA256"):
            raise SignatureError("IncompleteSignature", "the Authorization header is not a complete AWS4-HMAC-SHA256 one")
        raise SignatureError("AuthFailure", "only AWS Signature Version 4 (AWS4-HMAC-SHA256) is accepted")
    parts = m["credential"].split("/")
    if len(parts) != 5:
        raise SignatureError("IncompleteSignature", "Credential must be KEY/DATE/REGION/SERVICE/aws4_request")
    access_key, date, cred_region, service, terminator = parts
    if service != SERVICE or terminator != "aws4_request":
        raise SignatureError("AuthFailure", f"the credential scope must name service {SERVICE!r} and 'aws4_request'")
    if cred_region != region:
        raise SignatureError("AuthFailure", f"the credential scope names region {cred_region!r}; this endpoint serves "
                                            f"{region!r}")
    secret = secret_for(access_key)
    if secret is None:
        raise SignatureError("AuthFailure", "the access key id is not known")
    amz_date = headers.get("x-amz-date", "")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError("AuthFailure", "X-Amz-Date must be given as YYYYMMDDTHHMMSSZ") from None
    if amz_date[:8] != date:
        raise SignatureError("SignatureDoesNotMatch", "the credential scope's date is not the X-Amz-Date's")
    clock = time.time() if now is None else now
    if abs(clock - when.timestamp()) > max_skew:
        raise SignatureError("RequestExpired", f"the request's time {amz_date} is more than {max_skew / 60:.0f} minutes "
                                               "from the server's")
    signed = m["signed"].split(";")
    if signed != sorted(signed) or "host" not in signed or "x-amz-date" not in signed:
        raise SignatureError("AuthFailure", "SignedHeaders must be sorted and include host and x-amz-date")
    creq = canonical_request(req, signed)
    scope = f"{date}/{region}/{SERVICE}/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    expected = hmac.new(signing_key(secret, date, region), to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, m["signature"]):
        raise SignatureError("SignatureDoesNotMatch", "the request signature we calculated does not match the "
                                                      "signature you provided: check your secret key and signing method")
    return access_key
