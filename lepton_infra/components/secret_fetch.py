"""The `host_key_fetch` commands (cloudinit's hook) of GCP and Azure nodes: the stdlib fetcher
`metadata_fetch_secret.py`, embedded in the node's cloud-init as a here-document for the image's
python3, told only where the secret is (which is no secret). `node_script` gives any such
node-side script's source, compacted for user data."""

from __future__ import annotations

import ast
import functools
import shlex

from lepton_infra.node import source


def fetch_command(*args: str) -> str:
    """POSIX shell that prints the secret `args` name (see metadata_fetch_secret.py's usage)."""
    quoted = " ".join(shlex.quote(a) for a in args)
    return f"python3 - {quoted} <<'LEPTON_PY'\n{node_script('metadata_fetch_secret.py')}\nLEPTON_PY"


@functools.cache
def node_script(filename: str) -> str:
    """A node-side script of this package without its docstrings and comments (cloud-init user data
    has size limits: 64 KB of custom data on Azure)."""
    tree = ast.parse(source(filename))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                body.pop(0)
    return ast.unparse(tree)
