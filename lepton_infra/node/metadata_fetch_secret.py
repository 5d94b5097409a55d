"""Node-side, stdlib only: print one secret from Google Secret Manager or Azure Key Vault with a token
of the node's own identity from the cloud's metadata server.

Its source is embedded in each GCP/Azure node's cloud-init (see `gcp.host_key_fetch`,
`azure.host_key_fetch`) and runs at first boot under the image's python3, before anything is
installed, so it cannot rely on gcloud/az. Usage:
    python3 metadata_fetch_secret.py gcp projects/<p>/secrets/<id>/versions/latest
    python3 metadata_fetch_secret.py azure https://<vault>.vault.azure.net/ <secret-name>
LEPTON_GCE_METADATA, LEPTON_SECRETMANAGER_ENDPOINT, LEPTON_IMDS and LEPTON_KEYVAULT_ENDPOINT point
it at other endpoints (tests)."""

import base64
import json
import os
import sys
import urllib.parse
import urllib.request


def _get_json(url: str, headers: dict[str, str]) -> dict[str, object]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        found: dict[str, object] = json.loads(response.read())
        return found


def gcp(version_name: str) -> str:
    """The payload of a Secret Manager secret version, read as the VM's service account."""
    metadata = os.environ.get("LEPTON_GCE_METADATA", "http://metadata.google.internal")
    token = _get_json(
        metadata + "/computeMetadata/v1/instance/service-accounts/default/token",
        {"Metadata-Flavor": "Google"},
    )["access_token"]
    endpoint = os.environ.get("LEPTON_SECRETMANAGER_ENDPOINT", "https://secretmanager.googleapis.com")
    found = _get_json(f"{endpoint}/v1/{version_name}:access", {"Authorization": f"Bearer {token}"})
    payload = found["payload"]
    assert isinstance(payload, dict)
    return base64.b64decode(str(payload["data"])).decode()


def azure(vault_uri: str, secret_name: str) -> str:
    """A Key Vault secret's current value, read as the VM's (only) managed identity."""
    imds = os.environ.get("LEPTON_IMDS", "http://169.254.169.254")
    query = urllib.parse.urlencode({"api-version": "2018-02-01", "resource": "https://vault.azure.net"})
    token = _get_json(f"{imds}/metadata/identity/oauth2/token?{query}", {"Metadata": "true"})["access_token"]
    vault = os.environ.get("LEPTON_KEYVAULT_ENDPOINT", vault_uri).rstrip("/")
    name = urllib.parse.quote(secret_name, safe="")
    found = _get_json(f"{vault}/secrets/{name}?api-version=7.4", {"Authorization": f"Bearer {token}"})
    return str(found["value"])


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[1] == "gcp":
        sys.stdout.write(gcp(argv[2]))
    elif len(argv) >= 4 and argv[1] == "azure":
        sys.stdout.write(azure(argv[2], argv[3]))
    else:
        sys.stderr.write("usage: metadata_fetch_secret.py gcp <version> | azure <vault-uri> <name>\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
