"""The layering of docs/architecture.md's package table, checked on every import of the package (module level and
inside functions, TYPE_CHECKING blocks too): a package imports only what its row names, a module row overrides its
package's, `errors` and the package's own `__version__` are everyone's. The table is the contract, parsed here, so
neither the code nor the document can move without the other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import promptkd_edge

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(promptkd_edge.__file__).parent  # the package imported: a mutated copy where the mutation tests put one
EVERYONE = {"errors", ""}  # promptkd_edge.errors; `from promptkd_edge import __version__`


def contract(text: str) -> dict[str, set[str]]:
    """{`pkg/` or `pkg/module.py`: the packages it may import} from the table whose header ends in `imports ...`."""
    rows = re.findall(r"^\| `([\w/.]+)` \|.*\| ([^|]*) \|$", text, flags=re.M)
    if not rows:
        raise AssertionError("docs/architecture.md has no package table with an imports column")
    return {name: set(re.findall(r"`(\w+)/`", allowed)) for name, allowed in rows}


def imports_of(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, dotted module below promptkd_edge) of every import of the package in the module at `path`."""
    rel = path.relative_to(PACKAGE)
    tree = ast.parse(source if source is not None else path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:  # relative: from the module's own package
            base = list(rel.parts[:-1])[: len(rel.parts) - node.level]
            found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "promptkd_edge":
            found.append((node.lineno, node.module.partition(".")[2]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.partition(".")[2]) for a in node.names
                      if a.name.split(".")[0] == "promptkd_edge"]
    return found


def violations(rules: dict[str, set[str]], path: Path, source: str | None = None) -> list[str]:
    """One line per import of `path` its row does not allow."""
    rel = path.relative_to(PACKAGE)
    if len(rel.parts) == 1:  # promptkd_edge/__init__.py, __main__.py, errors.py: the entry points and the base
        return []
    package = rel.parts[0]
    allowed = rules.get(rel.as_posix(), rules.get(f"{package}/"))
    if allowed is None:
        return [f"{rel}: its package {package}/ has no row in docs/architecture.md's table"]
    bad = []
    for line, module in imports_of(path, source):
        target = module.split(".")[0]
        if target != package and target not in EVERYONE and target not in allowed:
            rule = ", ".join(sorted(allowed)) or "nothing of the package"
            bad.append(f"{rel}:{line} imports promptkd_edge.{module}; {package}/ may import {rule}")
    return bad


@pytest.fixture(scope="module")
def rules() -> dict[str, set[str]]:
    return contract((REPO / "docs" / "architecture.md").read_text())


def test_every_import_follows_the_documented_layering(rules):
    bad = [v for path in sorted(PACKAGE.rglob("*.py")) for v in violations(rules, path)]
    assert not bad, "\n".join(bad)


def test_the_table_names_every_package_and_only_real_ones(rules):
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    rows = {name.rstrip("/") for name in rules if name.endswith("/")}
    assert rows == packages
    for name, allowed in rules.items():
        assert (PACKAGE / name).exists(), f"the table names {name}, which is not in the package"
        assert allowed <= packages, f"{name} may import {allowed - packages}, not packages"


def test_every_module_row_is_still_needed(rules):
    """An exception the code no longer uses is removed from the table (else it would allow an import for free)."""
    for name, allowed in rules.items():
        if name.endswith("/"):
            continue
        package = name.split("/")[0]
        extra = allowed - rules[f"{package}/"]
        used = {m.split(".")[0] for _, m in imports_of(PACKAGE / name)}
        assert extra <= used, f"{name}'s row allows {extra - used}, which it no longer imports"


@pytest.mark.parametrize("source, caught", [
    ("from promptkd_edge.runtime.bundle import open_bundle\n", True),  # formats -> runtime: upward
    ("def f():\n    from promptkd_edge.train import config\n", True),  # lazy, inside a function
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import promptkd_edge.models.student\n", True),
    ("from ..export import fold\n", True),  # relative, out of the package
    ("from promptkd_edge.utils.files import read_json\nfrom promptkd_edge.errors import PkdError\n", False),
    ("from promptkd_edge import __version__\nfrom . import manifest\n", False),
])
def test_the_checker_catches_what_it_must(rules, source, caught):
    """Each kind of import the checker reads, in a module of formats/ (which may import utils/ alone)."""
    found = violations(rules, PACKAGE / "formats" / "probe.py", source)
    assert bool(found) == caught, found


def test_a_table_row_change_is_read(rules):
    """Allowing runtime/ in formats/' row makes the upward import above pass: the rule comes from the document."""
    widened = {**rules, "formats/": rules["formats/"] | {"runtime"}}
    assert not violations(widened, PACKAGE / "formats" / "probe.py", "import promptkd_edge.runtime.bundle\n")
