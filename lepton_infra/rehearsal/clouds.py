"""The cloud around the rehearsal's nodes, per cloud, speaking the real protocols: the instance
metadata service (AWS IMDSv2 session token + role credentials; GCE metadata with Metadata-Flavor,
instance attributes and a service-account token; Azure IMDS with `Metadata: true` and managed
identity tokens), the secret store the node fetches its host key from (moto's Secrets Manager
behind the real host name; stand-ins for Secret Manager and Key Vault that check the caller's token
and allow each node only its own secret), Azure Resource Manager's deallocate/delete (recorded,
checked against the identity's token), and the environment that points the data plane's SDKs at
the store emulators (their standard variables). Every call is recorded in `calls`."""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from lepton_infra.rehearsal.serve import Handler, Request, Response, proxy, reply

_DENIED = reply(403, '{"error": "denied"}')


@dataclass
class Cloud:
    """One cloud's services for the nodes of one rendered cluster (`material`, see render.py).
    `node_of(address)` says which node a caller is (None: not a node)."""

    material: dict[str, Any]
    node_of: Any
    calls: list[dict[str, Any]] = field(default_factory=list)
    tokens: dict[str, tuple[int, str]] = field(default_factory=dict)  # token -> (node, audience)
    environment: dict[str, str] = field(default_factory=dict)
    upstreams: dict[str, str] = field(default_factory=dict)

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return list(self.material["nodes"])

    def issue(self, node: int, audience: str) -> str:
        token = f"rh-{node}-{secrets.token_hex(12)}"
        self.tokens[token] = (node, audience)
        return token

    def bearer(self, req: Request) -> tuple[int, str] | None:
        auth = req.headers.get("authorization", "")
        return self.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None

    def record(self, kind: str, node: int | None, **what: Any) -> None:
        self.calls.append({"kind": kind, "node": node, "at": time.monotonic(), **what})

    def metadata(self, req: Request) -> Response:  # pragma: no cover - per cloud
        raise NotImplementedError

    def front(self) -> dict[str, Handler]:
        """Host name -> handler, for the TLS front (names resolve to the rehearsal's gateway)."""
        raise NotImplementedError

    def hosts(self, gateway: str) -> dict[str, str]:
        return {name: gateway for name in self.front()}


class Aws(Cloud):
    ROLE_CREDS = {"AccessKeyId": "ASIAREHEARSAL", "SecretAccessKey": "rehearsal", "Code": "Success"}

    def metadata(self, req: Request) -> Response:
        k = self.node_of(req.client)
        if k is None:
            return _DENIED
        if req.method == "PUT" and req.path == "/latest/api/token":
            if "x-aws-ec2-metadata-token-ttl-seconds" not in req.headers:
                return reply(400, "missing ttl", "text/plain")
            return reply(200, self.issue(k, "imds"), "text/plain")
        if self.tokens.get(req.headers.get("x-aws-ec2-metadata-token", "")) != (k, "imds"):
            return reply(401, "IMDSv2 session token required", "text/plain")  # IMDSv1 is off
        node, path = self.nodes[k], req.path.split("?")[0]
        role = node["role"]
        answers = {
            "/latest/meta-data/iam/security-credentials/": role,
            "/latest/meta-data/instance-id": f"i-rehearsal{k}",
            "/latest/meta-data/placement/region": "us-east-1",
            "/latest/meta-data/placement/availability-zone": "us-east-1a",
            "/latest/user-data": node["user_data"],
            "/latest/dynamic/instance-identity/document": json.dumps(
                {"region": "us-east-1", "instanceId": f"i-rehearsal{k}", "accountId": "123456789012"}
            ),
        }
        if path == f"/latest/meta-data/iam/security-credentials/{role}":
            self.record("role-credentials", k, role=role)
            expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
            return reply(
                200, json.dumps({**self.ROLE_CREDS, "Token": f"token-of-{role}", "Expiration": expires})
            )
        if path in answers:
            return reply(200, answers[path], "text/plain")
        return reply(404, "not found", "text/plain")

    def front(self) -> dict[str, Handler]:
        moto = proxy(self.upstreams["moto"])

        def secretsmanager(req: Request) -> Response:
            body = json.loads(req.body or b"{}")
            self.record(
                "secret-read",
                self.node_of(req.client),
                secret=body.get("SecretId"),
                target=req.headers.get("x-amz-target"),
            )
            return moto(req)

        return {"secretsmanager.us-east-1.amazonaws.com": secretsmanager}


class Gcp(Cloud):
    PROJECT = "lepton-rehearsal"

    def metadata(self, req: Request) -> Response:
        k = self.node_of(req.client)
        if k is None or req.headers.get("metadata-flavor") != "Google" or "x-forwarded-for" in req.headers:
            return _DENIED
        node, path = self.nodes[k], urllib.parse.urlsplit(req.path).path
        status, headers, body = self._answer(k, node, path)
        return status, {**headers, "Metadata-Flavor": "Google"}, body

    def _answer(self, k: int, node: dict[str, Any], path: str) -> Response:
        base = "/computeMetadata/v1/"
        attrs: dict[str, str] = node["metadata"]
        account = "instance/service-accounts/default/"
        if path in ("/", base):
            return reply(200, "computeMetadata/\n", "text/plain")
        if path == base + account + "token":
            self.record("identity-token", k, account=node["service_account"])
            return reply(
                200,
                json.dumps(
                    {"access_token": self.issue(k, "gcp"), "expires_in": 3599, "token_type": "Bearer"}
                ),
            )
        if path == base + account + "email":
            return reply(200, node["service_account"], "text/plain")
        if path == base + "project/project-id":
            return reply(200, self.PROJECT, "text/plain")
        if path == base + "instance/attributes/":
            return reply(200, "".join(f"{a}\n" for a in attrs), "text/plain")
        if path.startswith(base + "instance/attributes/") and path.rsplit("/", 1)[1] in attrs:
            return reply(200, str(attrs[path.rsplit("/", 1)[1]]), "text/plain")
        if path == base + "instance/hostname":
            return reply(200, f"node-{k}.c.{self.PROJECT}.internal", "text/plain")
        return reply(404, "not found", "text/plain")

    def front(self) -> dict[str, Handler]:
        owners = {name: i for i, name in enumerate(self.material["secrets"])}

        def secretmanager(req: Request) -> Response:
            caller = self.bearer(req)
            path = req.path.split("?")[0]
            name = path.removeprefix("/v1/").removesuffix(":access").removesuffix("/versions/latest")
            self.record("secret-read", caller[0] if caller else None, secret=name, method=req.method)
            if caller is None or req.method != "GET" or not path.endswith("/versions/latest:access"):
                return reply(401 if caller is None else 400, '{"error": {"code": 401}}')
            if owners.get(name) != caller[0]:
                return reply(403, '{"error": {"code": 403, "status": "PERMISSION_DENIED"}}')
            data = base64.b64encode(self.material["secrets"][name].encode()).decode()
            return reply(200, json.dumps({"name": f"{name}/versions/1", "payload": {"data": data}}))

        return {"secretmanager.googleapis.com": secretmanager}

    def hosts(self, gateway: str) -> dict[str, str]:
        # GCE's images resolve the metadata server's name in /etc/hosts too.
        return {**super().hosts(gateway), "metadata.google.internal": "169.254.169.254"}


class Azure(Cloud):
    VAULT, ARM = "https://vault.azure.net", "https://management.azure.com/"

    def metadata(self, req: Request) -> Response:
        k = self.node_of(req.client)
        if k is None or req.headers.get("metadata") != "true" or "x-forwarded-for" in req.headers:
            return reply(
                400, '{"error": "bad_request", "error_description": "Required metadata header not specified"}'
            )
        parts = urllib.parse.urlsplit(req.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        node = self.nodes[k]
        if parts.path == "/metadata/identity/oauth2/token":
            resource = query.get("resource", "")
            self.record("identity-token", k, resource=resource)
            token = self.issue(k, resource)
            return reply(
                200,
                json.dumps(
                    {
                        "access_token": token,
                        "expires_in": "3599",
                        "resource": resource,
                        "token_type": "Bearer",
                    }
                ),
            )
        if parts.path == "/metadata/instance/compute/resourceId":
            return reply(200, node["resource_id"], "text/plain")
        if parts.path == "/metadata/instance/compute/userData":
            return reply(200, "", "text/plain")  # the pool passes custom data, not user data
        if parts.path == "/metadata/instance":
            compute = {
                "resourceId": node["resource_id"],
                "name": f"node-{k}",
                "location": "eastus",
                "osProfile": {},
            }
            return reply(200, json.dumps({"compute": compute}))
        return reply(404, "{}")

    def front(self) -> dict[str, Handler]:
        vaults = {name.split("/")[0] for name in self.material["secrets"]}
        owners = {name: i for i, name in enumerate(self.material["secrets"])}

        def keyvault(req: Request) -> Response:
            caller = self.bearer(req)
            name = f"{req.host.split('.')[0]}/{urllib.parse.unquote(req.path.split('?')[0].removeprefix('/secrets/'))}"
            self.record("secret-read", caller[0] if caller else None, secret=name)
            if caller is None or caller[1].rstrip("/") != self.VAULT:
                return reply(401, '{"error": {"code": "Unauthorized"}}')
            if owners.get(name) != caller[0]:
                return reply(403, '{"error": {"code": "Forbidden"}}')
            return reply(
                200,
                json.dumps(
                    {"value": self.material["secrets"][name], "id": f"https://{req.host}/secrets/{name}"}
                ),
            )

        def arm(req: Request) -> Response:
            caller = self.bearer(req)
            path = req.path.split("?")[0]
            target = path.removesuffix("/deallocate")
            action = (
                "deallocate" if path.endswith("/deallocate") and req.method == "POST" else req.method.lower()
            )
            owner = next((i for i, n in enumerate(self.nodes) if n["resource_id"] == target), None)
            ok = caller is not None and caller[1] == self.ARM and owner == caller[0]
            self.record("arm", caller[0] if caller else None, action=action, resource=target, accepted=ok)
            if not ok:
                return reply(403, '{"error": {"code": "AuthorizationFailed"}}')
            return reply(202, "")

        return {**{f"{v}.vault.azure.net": keyvault for v in vaults}, "management.azure.com": arm}


CLOUDS: dict[str, type[Cloud]] = {"aws": Aws, "gcp": Gcp, "azure": Azure}
