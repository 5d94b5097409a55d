"""Node-side, stdlib only: print one AWS Secrets Manager secret's SecretString, signed with the
instance role's credentials from the instance metadata service (IMDSv2).

Its source is embedded in each node's user data (see `aws.host_key_fetch`) and runs at first boot
under the image's python3, before anything is installed, so it cannot rely on the AWS CLI or boto3.
Usage: `python3 aws_fetch_secret.py <secret-arn>`. LEPTON_IMDS and LEPTON_SECRETSMANAGER_ENDPOINT
point it at other endpoints (tests)."""

import datetime
import hashlib
import hmac
import json
import os
import sys
import urllib.parse
import urllib.request

IMDS = os.environ.get("LEPTON_IMDS", "http://169.254.169.254")
TARGET = "secretsmanager.GetSecretValue"


def _imds(path: str, token: str) -> str:
    request = urllib.request.Request(IMDS + path, headers={"X-aws-ec2-metadata-token": token})
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())


def credentials() -> dict[str, str]:
    """The instance role's temporary credentials (IMDSv2: a session token first)."""
    put = urllib.request.Request(
        IMDS + "/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}
    )
    with urllib.request.urlopen(put, timeout=5) as response:
        token = response.read().decode()
    role = _imds("/latest/meta-data/iam/security-credentials/", token).split()[0]
    found: dict[str, str] = json.loads(_imds("/latest/meta-data/iam/security-credentials/" + role, token))
    return found


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signed_headers(
    url: str, body: bytes, region: str, creds: dict[str, str], now: datetime.datetime
) -> dict[str, str]:
    """Headers of a Signature Version 4 signed POST of `body` (AWS JSON 1.1) to `url`."""
    host = urllib.parse.urlsplit(url).netloc
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    headers = {
        "content-type": "application/x-amz-json-1.1",
        "host": host,
        "x-amz-date": stamp,
        "x-amz-security-token": creds["Token"],
        "x-amz-target": TARGET,
    }
    names = ";".join(sorted(headers))
    canonical = "\n".join(
        ["POST", "/", "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", names]
        + [hashlib.sha256(body).hexdigest()]
    )
    scope = f"{day}/{region}/secretsmanager/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(("AWS4" + creds["SecretAccessKey"]).encode(), day)
    for part in (region, "secretsmanager", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={creds['AccessKeyId']}/{scope}, "
        f"SignedHeaders={names}, Signature={signature}"
    )
    return headers


def fetch(secret_arn: str) -> str:
    """The secret's value. The region (and partition) come from its ARN: the secret lives there."""
    _, partition, _, region = secret_arn.split(":")[:4]
    suffix = "amazonaws.com.cn" if partition == "aws-cn" else "amazonaws.com"
    url = os.environ.get("LEPTON_SECRETSMANAGER_ENDPOINT", f"https://secretsmanager.{region}.{suffix}") + "/"
    body = json.dumps({"SecretId": secret_arn}).encode()
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017  (datetime.UTC: 3.11+, nodes may run 3.10)
    request = urllib.request.Request(
        url, data=body, method="POST", headers=signed_headers(url, body, region, credentials(), now)
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["SecretString"])


if __name__ == "__main__":
    sys.stdout.write(fetch(sys.argv[1]))
