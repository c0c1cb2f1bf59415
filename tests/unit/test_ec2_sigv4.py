"""AWS Signature Version 4 as the EC2 gateway checks it, against botocore's own signer (the
one boto3 and the aws CLI use): what it signs is accepted, anything changed after signing is not."""

from __future__ import annotations

import hashlib
import time

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from bootstrap.ec2.sigv4 import SignatureError, SignedRequest, verify

KEYS = {"AKIDEXAMPLE": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
URL = "http://127.0.0.1:8773/"
BODY = b"Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-0123"


def signed(body: bytes = BODY, *, region: str = "snooze", key: str = "AKIDEXAMPLE", secret: str | None = None,
           url: str = URL, method: str = "POST") -> SignedRequest:
    req = AWSRequest(method=method, url=url, data=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    SigV4Auth(Credentials(key, secret or KEYS.get(key, "x")), "ec2", region).add_auth(req)
    prepared = req.prepare()
    path, _, query = prepared.url.split("127.0.0.1:8773", 1)[1].partition("?")
    headers = dict(prepared.headers)
    headers["Host"] = "127.0.0.1:8773"
    return SignedRequest(method, path, query, headers, body)


def check(req: SignedRequest, **kw: object) -> str:
    return verify(req, KEYS.get, "snooze", **kw)  # type: ignore[arg-type]


def test_botocore_signed_requests_are_accepted() -> None:
    assert check(signed()) == "AKIDEXAMPLE"
    get = signed(b"", url=URL + "?Action=DescribeImages&Version=2016-11-15&ImageId.1=a%20b", method="GET")
    assert check(get) == "AKIDEXAMPLE"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda r: SignedRequest(r.method, r.path, r.query, r.headers, r.body + b"&MaxCount=9"), "SignatureDoesNotMatch"),
        (lambda r: SignedRequest("GET", r.path, r.query, r.headers, r.body), "SignatureDoesNotMatch"),
        (lambda r: SignedRequest(r.method, "/other", r.query, r.headers, r.body), "SignatureDoesNotMatch"),
        (lambda r: SignedRequest(r.method, r.path, r.query, {**r.headers, "Host": "evil:1"}, r.body), "SignatureDoesNotMatch"),
        (lambda r: SignedRequest(r.method, r.path, r.query, {k: v for k, v in r.headers.items() if k != "Authorization"},
                                 r.body), "AuthFailure"),
        (lambda r: SignedRequest(r.method, r.path, r.query,
                                 {**r.headers, "X-Amz-Content-SHA256": hashlib.sha256(b"other").hexdigest()}, r.body),
         "SignatureDoesNotMatch"),
    ],
    ids=["body", "method", "path", "host", "unsigned", "claimed-payload-hash"],
)
def test_anything_changed_after_signing_is_refused(change: object, code: str) -> None:
    with pytest.raises(SignatureError) as err:
        check(change(signed()))  # type: ignore[operator]
    assert err.value.code == code


def test_wrong_secret_unknown_key_other_region_and_old_requests_are_refused() -> None:
    cases = [
        (signed(secret="not-the-secret"), "SignatureDoesNotMatch"),
        (signed(key="AKIDUNKNOWN"), "AuthFailure"),
        (signed(region="us-east-1"), "AuthFailure"),
    ]
    for req, code in cases:
        with pytest.raises(SignatureError) as err:
            check(req)
        assert err.value.code == code, req
    with pytest.raises(SignatureError) as err:
        check(signed(), now=time.time() + 16 * 60)
    assert err.value.code == "RequestExpired"


def test_only_signature_version_4_is_accepted() -> None:
    req = signed()
    v2 = SignedRequest(req.method, req.path, req.query, {**req.headers, "Authorization": "AWS AKIDEXAMPLE:abc="}, req.body)
    with pytest.raises(SignatureError, match="Version 4") as err:
        check(v2)
    assert err.value.code == "AuthFailure"
