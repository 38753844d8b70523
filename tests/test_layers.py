"""Unit: imports go one way through the layers, and the HTTP client stays free of Ray and torch.

    serve_app, cli  ->  actors  ->  cluster  ->  models  ->  media  ->  errors

A module may import its own layer and any layer below it, never one above. Every import counts:
top level, inside functions, under `if TYPE_CHECKING:`, relative, and `importlib.import_module`
with a literal name. `raylens/client.py` is a leaf of its own (docs/architecture.md, "Layout"):
it may use only `raylens.errors` and `raylens.media.formats` (and any layer above may use it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raylens"

# Lower number = lower layer. Peers (serve_app and cli) share a number.
LAYERS: dict[str, int] = {
    "raylens.errors": 0,
    "raylens.media": 1,
    "raylens.client": 2,  # imports errors and media.formats only; see test below
    "raylens.models": 3,
    "raylens.cluster": 4,
    "raylens.actors": 5,
    "raylens.serve_app": 6,
    "raylens.cli": 6,
}
LAYER_ORDER = "serve_app, cli -> actors -> cluster -> models -> media -> errors"
CLIENT_MAY_IMPORT = ("raylens.errors", "raylens.media.formats")
CLIENT_MUST_NOT_IMPORT = ("ray", "torch", "open_clip", "raylens.actors", "raylens.cluster")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str | None:
    """The layer a raylens module belongs to (the longest LAYERS key it is in)."""
    found = [key for key in LAYERS if module == key or module.startswith(key + ".")]
    return max(found, key=len) if found else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, nested ones included."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from raylens import cluster` imports the subpackage raylens.cluster
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _upward_imports() -> list[str]:
    problems = []
    for path in _sources():
        here = _layer(_module_name(path))
        if here is None:  # raylens/__init__.py: the package itself, imports nothing of ours
            continue
        for line, target in _imports(path):
            there = _layer(target)
            if there is not None and LAYERS[there] > LAYERS[here]:
                problems.append(
                    f"{path.relative_to(ROOT)}:{line}: {_module_name(path)} ({here}) imports "
                    f"{target} ({there}), a layer above it"
                )
    return problems


def test_layers_import_only_their_own_layer_or_below_when_any_module_imports() -> None:
    problems = _upward_imports()
    assert not problems, f"imports must go {LAYER_ORDER}:\n" + "\n".join(problems)


def test_layers_cover_every_module_when_a_folder_is_added() -> None:
    """A new top-level folder or module must be given a layer here, or it escapes the check."""
    unplaced = [
        str(p.relative_to(ROOT))
        for p in _sources()
        if _layer(_module_name(p)) is None and p != PACKAGE / "__init__.py"
    ]
    assert not unplaced, f"give these a layer in tests/test_layers.py LAYERS: {unplaced}"


def test_layers_report_an_upward_import_when_one_is_there(tmp_path, monkeypatch) -> None:
    """The check itself can fail: a function-level import of an actor from media is caught."""
    fake_root = tmp_path / "repo"
    media = fake_root / "raylens" / "media"
    media.mkdir(parents=True)
    (fake_root / "raylens" / "__init__.py").write_text("")
    (media / "__init__.py").write_text("")
    (media / "bad.py").write_text(
        '"""x"""\n\n\ndef f():\n    from ..actors import queue\n    return queue\n'
    )
    monkeypatch.setitem(globals(), "ROOT", fake_root)
    monkeypatch.setitem(globals(), "PACKAGE", fake_root / "raylens")
    assert _upward_imports() == [
        "raylens/media/bad.py:5: raylens.media.bad (raylens.media) imports "
        "raylens.actors.queue (raylens.actors), a layer above it"
    ]


@pytest.mark.parametrize("forbidden", CLIENT_MUST_NOT_IMPORT)
def test_client_imports_no_ray_torch_or_cluster_code_when_parsed(forbidden: str) -> None:
    imports = _imports(PACKAGE / "client.py")
    bad = [
        f"raylens/client.py:{line}: imports {target}"
        for line, target in imports
        if target == forbidden or target.startswith(forbidden + ".")
    ]
    assert not bad, "\n".join(bad)


def test_client_uses_only_errors_and_media_formats_when_it_imports_raylens() -> None:
    imports = _imports(PACKAGE / "client.py")
    ours = [(line, t) for line, t in imports if t == "raylens" or t.startswith("raylens.")]
    bad = [
        f"raylens/client.py:{line}: imports {target}"
        for line, target in ours
        if not any(target == ok or target.startswith(ok + ".") for ok in CLIENT_MAY_IMPORT)
    ]
    assert not bad, f"the client may import only {CLIENT_MAY_IMPORT}:\n" + "\n".join(bad)
