"""Runs a node program made of several modules that travels as ONE Python source (a bundle).

A node has no lepton_infra, and a node program reaches it as one text: `python -c TEXT` (the
bootstrap before anything was shipped, the uploader from the agent) or one file the job imports
(the uploader as `$LEPTON_STORE_CLIENT`). The controller (`lepton_infra.node.bundle`) writes this
file first, then one call `_open_bundle(PACKAGE, SOURCES, globals())` with every module's source
in a dict. The finder below serves that package from the dict, so its modules import each other
with ordinary relative imports, exactly as they do from lepton_infra's own tree (where the tests
import them), and a traceback still shows their lines. Standard library only, and cheap: no
`importlib.abc` (it imports `typing`), nothing compiled until imported."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from types import ModuleType, TracebackType


class _Bundled:
    """Finder and loader of one package whose module sources are held in memory. `sources`
    maps a module's name inside the package (`__init__` for the package itself) to its text; it
    stays readable here so a program can install itself (the bootstrap does)."""

    def __init__(self, package: str, sources: dict[str, str]) -> None:
        self.package = package
        self.sources = sources

    def _key(self, fullname: str) -> str | None:
        if fullname == self.package:
            return "__init__"
        parent, _, name = fullname.rpartition(".")
        return name if parent == self.package and name in self.sources else None

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        key = self._key(fullname)
        if key is None:
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(fullname, self, is_package=key == "__init__")  # type: ignore[arg-type]  # a Loader by protocol

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        key = self._key(module.__name__)
        # Not inside angle brackets: linecache then asks get_source for a traceback's lines.
        filename = f"{self.package}/{key}.py"
        # dont_inherit: this file's `from __future__` flags are not the module's.
        code = compile(self.sources[str(key)], filename, "exec", dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102 - the module's own code, as an import runs it

    def get_source(self, fullname: str) -> str | None:
        key = self._key(fullname)
        return None if key is None else self.sources[key]


def _print_exception(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    """The interpreter's own hook reads a traceback's lines from files; `traceback` asks the
    module's loader (`get_source`), so a bundled module's failing line is shown too."""
    import traceback

    traceback.print_exception(kind, value, tb)


def _open_bundle(package: str, sources: dict[str, str], namespace: dict[str, object]) -> None:
    """Import `package` from `sources`; run as a program (`python -c`, `python FILE`) it calls the
    package's `main(sys.argv)` and exits with its status; imported as a module, that module gets
    the package's public names (its `__all__`)."""
    if not any(getattr(f, "package", None) == package for f in sys.meta_path):
        sys.meta_path.insert(0, _Bundled(package, sources))  # type: ignore[arg-type]
    if namespace.get("__name__") == "__main__":
        sys.excepthook = _print_exception
        sys.exit(__import__(package).main(sys.argv))
    module = __import__(package)
    namespace.update({name: getattr(module, name) for name in getattr(module, "__all__", ())})
