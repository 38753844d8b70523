"""A real S3-compatible server for tests: moto's server mode on a free loopback port.

IAM authentication is switched on once the fixture has made its user, so a wrong secret is
refused (SignatureDoesNotMatch) as AWS refuses it, instead of moto's default of accepting any
credentials."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from _ports import free_port

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str

    def env(self, **overrides: str) -> dict[str, str]:
        """The standard AWS_* variables that reach this server with the fixture's user."""
        base = {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }
        base.update(overrides)
        return base

    def client(self) -> Any:
        """A boto3 S3 client as the fixture's user (buckets are made and changed with it)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


def start_s3_server() -> tuple[S3Server, Any]:
    """Start moto on 127.0.0.1:<free port>, make a user allowed s3:*, then turn auth on."""
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # moto keeps its state per process: start from empty backends, with auth off to set up.
    requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
    _auth_after(endpoint, "inf")
    anyone = dict(
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    iam = boto3.client("iam", **anyone)
    iam.create_user(UserName="raylens-test")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(UserName="raylens-test", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="raylens-test")["AccessKey"]
    _auth_after(endpoint, "0")  # from now on every request is checked: signature and policy
    return S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"]), server


def stop_s3_server(s3: S3Server, server: Any) -> None:
    _auth_after(s3.endpoint, "inf")  # moto's auth switch is process-wide: leave it off
    server.stop()


def _auth_after(endpoint: str, requests_without_auth: str) -> None:
    import requests

    requests.post(
        f"{endpoint}/moto-api/reset-auth", data=requests_without_auth.encode(), timeout=10
    ).raise_for_status()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server per test module (stopped after it)."""
    s3, server = start_s3_server()
    try:
        yield s3
    finally:
        stop_s3_server(s3, server)


def put_objects(s3: S3Server, bucket: str, objects: dict[str, bytes]) -> None:
    client = s3.client()
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
