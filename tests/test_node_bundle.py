"""Node programs made of several modules travel as ONE source, a bundle (lepton_infra/node/
loader.py), and everything under lepton_infra/node/ imports only the standard library. Tested by
running them as a node does: the controller's own command under `sh -c`, a clean HOME, `python -S`."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from lepton_infra.node import AGENT_MODULES, NODE_DIR, bundle
from lepton_infra.workload.remote import BOOTSTRAP_MODULE, bootstrap_cmd, bootstrap_install


def _env(home: Path) -> dict[str, str]:
    # No PYTHONDONTWRITEBYTECODE: whether a node caches bytecode is part of what is checked.
    return {"HOME": str(home), "PATH": os.environ["PATH"]}


def _bootstrap(home: Path, request: dict[str, object]) -> dict[str, object]:
    done = subprocess.run(
        ["sh", "-c", bootstrap_cmd(sys.executable, "prepare")],
        input=json.dumps(request).encode(),
        env=_env(home),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def test_the_first_prepare_runs_inline_and_installs_the_bootstrap_for_the_next_commands(
    tmp_path: Path,
) -> None:
    bin_dir = tmp_path / ".lepton" / "bin"
    installed = bin_dir / BOOTSTRAP_MODULE
    first = _bootstrap(tmp_path, {"run_id": "r1", "blobs": {}, "install": bootstrap_install()})
    assert first["exists"] is False
    # Every module, exactly as lepton_infra has it, and nothing half-written beside it.
    shipped = {p.name: p.read_text() for p in (NODE_DIR / "bootstrap").glob("*.py")}
    assert {p.name: p.read_text() for p in installed.glob("*.py")} == shipped
    assert [p.name for p in bin_dir.iterdir()] == [BOOTSTRAP_MODULE]
    assert not (installed / "__pycache__").exists()  # the inline run compiled from memory

    second = _bootstrap(tmp_path, {"run_id": "r1", "blobs": {}})
    assert second["exists"] is True
    # The second command imported the installed package from its files: bytecode now cached.
    cached = {p.name.split(".")[0] for p in (installed / "__pycache__").glob("*.pyc")}
    assert {"__init__", "commands", "stream"} <= cached <= {name.removesuffix(".py") for name in shipped}


def test_prepare_installs_only_the_version_it_was_asked_for(tmp_path: Path) -> None:
    _bootstrap(tmp_path, {"run_id": "r1", "blobs": {}, "install": {"name": "lepton_bootstrap_" + "0" * 16}})
    _bootstrap(tmp_path, {"run_id": "r2", "blobs": {}})
    assert not (tmp_path / ".lepton" / "bin").exists()


def _package(root: Path, helper: str) -> Path:
    root.mkdir(exist_ok=True)
    (root / "__init__.py").write_text(
        '"""A two-module program."""\n'
        "import sys\n\nfrom .helper import shout\n\n__all__ = ['shout']\n\n\n"
        "def main(argv):\n    print(shout(argv[1]))\n    return int(argv[2])\n"
    )
    (root / "helper.py").write_text(helper)
    return root


HELPER = "def shout(word):\n    if word == 'boom':\n        raise ValueError('no ' + word)\n    return word.upper()\n"


def test_a_bundle_runs_as_one_source_or_one_file_and_imports_as_one_file(tmp_path: Path) -> None:
    made = bundle(_package(tmp_path / "pkg", HELPER), "tiny")
    as_file = tmp_path / "client.py"
    as_file.write_text(made.source)
    for program in (["-c", made.source], [str(as_file)]):  # as the bootstrap and uploader; as a shipped file
        ran = subprocess.run(
            [sys.executable, "-I", "-S", *program, "hello", "3"], capture_output=True, text=True, timeout=30
        )
        assert (ran.returncode, ran.stdout) == (3, "HELLO\n"), ran.stderr

    code = (
        "import importlib.util, sys; s = importlib.util.spec_from_file_location('c', sys.argv[1]);"
        " m = importlib.util.module_from_spec(s); s.loader.exec_module(m); print(m.shout('x'), hasattr(m, 'main'))"
    )
    imported = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(as_file)], capture_output=True, text=True, timeout=30
    )
    assert imported.stdout == "X False\n", imported.stderr  # its __all__, nothing else


def test_a_traceback_from_a_bundle_names_the_module_and_shows_the_line(tmp_path: Path) -> None:
    made = bundle(_package(tmp_path / "pkg", HELPER), "tiny")
    ran = subprocess.run(
        [sys.executable, "-I", "-S", "-c", made.source, "boom", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ran.returncode == 1
    assert f'File "{made.name}/helper.py", line 3, in shout' in ran.stderr
    assert "raise ValueError('no ' + word)" in ran.stderr and "ValueError: no boom" in ran.stderr


def test_a_change_to_any_module_is_a_new_bundle_name(tmp_path: Path) -> None:
    before = bundle(_package(tmp_path / "pkg", HELPER), "tiny").name
    after = bundle(_package(tmp_path / "pkg", HELPER + "\n# edited\n"), "tiny").name
    assert before.startswith("tiny_") and after.startswith("tiny_") and before != after


# Imported inside a function, on purpose: what the program probes or needs for one kind of store.
OPTIONAL = {
    "preflight.py": {"torch"},  # its absence is the preflight's answer
    "metrics.py": {"pynvml"},  # GPU figures, only on nodes with nvidia-ml-py
    "upload/stores.py": {"obstore", "google"},  # the cloud stores' pinned clients (cloud-init)
}


def _imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """Every absolute import as (top-level name, inside a function)."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], inner) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], inner))
            visit(child, inner)

    visit(tree, False)
    return found


def test_every_node_module_imports_only_the_standard_library() -> None:
    stdlib = sys.stdlib_module_names | {"__future__"}
    # The agent's modules import each other by plain name: they travel together in its one zip.
    agent = {Path(m).stem for m in AGENT_MODULES}
    files = sorted(NODE_DIR.rglob("*.py"))
    assert len(files) > 20  # the fetchers, bootstrap/, upload/, agent, preflight, ...
    wrong = []
    for path in files:
        rel = path.relative_to(NODE_DIR).as_posix()
        for name, nested in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            sibling = rel in AGENT_MODULES and name in agent
            if name not in stdlib and not sibling and not (nested and name in OPTIONAL.get(rel, set())):
                wrong.append(f"{rel}: {name}{' (in a function)' if nested else ''}")
    assert not wrong, "node-side code must import only the standard library: " + ", ".join(wrong)
