"""What `pip install capxai` brings: pyproject.toml declares every package capxai imports, the optional ones (extras)
are imported only where used and, when absent, named with the extra that installs them (capxai._optional).
`make wheel-check` builds and installs the wheel and the sdist in a fresh venv and runs the op tests there."""
import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from capxai._optional import EXTRAS, MissingExtra, require

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "capxai"


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503): 'scikit-learn>=1' -> 'scikit-learn'."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


def _imports(path: Path):
    """(top-level package, at module level?, line) of each absolute import in ``path``, and the packages the module
    ``require``s at module level. Module level: run on import (class bodies included, function bodies not)."""
    found, required = [], set()

    def visit(node, module_level):
        for child in ast.iter_child_nodes(node):
            inside = module_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], module_level, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                found.append((child.module.split(".")[0], module_level, child.lineno))
            elif (module_level and isinstance(child, ast.Call) and getattr(child.func, "id", None) == "require"
                  and child.args and isinstance(child.args[0], ast.Constant)):
                required.add(child.args[0].value.split(".")[0])
            visit(child, inside)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found, required


def _third_party_imports():
    for path in sorted(PACKAGE.rglob("*.py")):
        found, required = _imports(path)
        for package, module_level, line in found:
            if package in sys.stdlib_module_names or package in ("capxai", "__future__"):
                continue
            yield package, module_level and package not in required, f"{path.relative_to(ROOT)}:{line}"


def test_every_imported_package_is_a_dependency_or_an_extra():
    project = _project()
    core = {_name(requirement) for requirement in project["dependencies"]}
    extras = {name: {_name(r) for r in requirements} for name, requirements in project["optional-dependencies"].items()}
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for package, _, where in _third_party_imports():
        names = {_name(d) for d in distributions.get(package, [])}
        assert names, f"{where}: {package} is imported but no installed distribution provides it"
        if not names & core and not (package in EXTRAS and names & extras[EXTRAS[package]]):
            undeclared.append(f"{where}: {package} ({', '.join(sorted(names))})")
    assert not undeclared, "imported but neither in [project].dependencies nor its extra:\n" + "\n".join(undeclared)


def test_extras_are_imported_only_where_used():
    """A module-level import of an optional package would make `import capxai...` fail without it; capxai imports
    them inside the functions that use them, or after ``require`` (which names the extra)."""
    eager = [f"{where}: {package}" for package, module_level, where in _third_party_imports()
             if module_level and package in EXTRAS]
    assert not eager, "optional packages imported at module level:\n" + "\n".join(eager)


def test_the_extras_of_pyproject_and_of_capxai_optional_agree():
    extras = _project()["optional-dependencies"]
    for package, extra in EXTRAS.items():
        assert package in {_name(r) for r in extras[extra]}, (package, extra)
    assert {"hf", "eval", "report"} <= set(_name(r) for r in extras["all"][0].split("[")[1].rstrip("]").split(","))
    assert "capxai[all]" in extras["test"]


@pytest.mark.parametrize("package", sorted(EXTRAS))
def test_a_missing_extra_names_the_pip_extra(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now fails as if it were not installed
    with pytest.raises(MissingExtra, match=rf"the thing needs {package}, .*pip install 'capxai\[{EXTRAS[package]}\]'"):
        require(package, "the thing")
    with pytest.raises(ModuleNotFoundError):  # still what callers that catch ImportError expect
        require(f"{package}.sub", "the thing")


def test_a_broken_optional_package_is_not_reported_as_missing(monkeypatch):
    """transformers installed but one of its own dependencies missing: that error, not 'pip install capxai[hf]'."""
    monkeypatch.delitem(sys.modules, "capxai_absent_dependency", raising=False)

    def fail(name, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'capxai_absent_dependency'", name="capxai_absent_dependency")

    monkeypatch.setattr(importlib, "import_module", fail)
    with pytest.raises(ModuleNotFoundError) as raised:
        require("transformers", "the thing")
    assert not isinstance(raised.value, MissingExtra) and raised.value.name == "capxai_absent_dependency"


def test_capxai_imports_and_parses_commands_without_any_extra():
    """The core install (no extras): every layer and the CLI's parser import with the optional packages absent."""
    blocked = ", ".join(repr(package) for package in EXTRAS)
    code = (f"import sys\nfor name in ({blocked},): sys.modules[name] = None\n"
            "import capxai, capxai.models, capxai.explain, capxai.train, capxai.evaluate, capxai.data\n"
            "import capxai.commands.explain_run, capxai.models.hf, capxai.models.hf_local\n"
            "from capxai.cli import build_parser\nbuild_parser()\n"
            f"assert not any(sys.modules.get(name) for name in ({blocked},))\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_an_extension_built_against_another_torch_says_what_to_install_or_rebuild():
    """What an isolated build without a build constraint leads to (pip's newest torch in the build environment)."""
    from types import SimpleNamespace

    from capxai._extension import _check_torch_matches

    with pytest.raises(ImportError, match=r"built against torch 0\.0\.1 but torch .* install torch==0\.0\.1, "
                                          r"or rebuild capxai .*--no-build-isolation"):
        _check_torch_matches(SimpleNamespace(torch_version="0.0.1"))


def test_a_command_without_its_extra_is_one_line_naming_it(tmp_path):
    """`capxai report` where matplotlib is not installed: exit 2 and what to install, not an 'internal error'."""
    code = ("import sys\nsys.modules['matplotlib'] = None\nfrom capxai.cli import main\n"
            f"sys.exit(main(['report', {str(tmp_path)!r}]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == ("capxai report: capxai's figures (capxai report, the word figures of capxai "
                                     "explain) needs matplotlib, which is not installed: pip install 'capxai[report]'")


def test_evaluate_without_the_caption_metrics_says_so_before_any_work(tmp_path):
    """`capxai evaluate` where pycocoevalcap is not installed stops before loading a model or captioning a split."""
    (tmp_path / "best.pt").write_bytes(b"not read: the check comes first")
    (tmp_path / "split.json").write_text("{}")
    code = ("import sys\nsys.modules['pycocoevalcap'] = None\nfrom capxai.cli import main\n"
            f"sys.exit(main(['evaluate', '--checkpoint', {str(tmp_path / 'best.pt')!r}, '--split-file', "
            f"{str(tmp_path / 'split.json')!r}, '--image-root', {str(tmp_path)!r}, '--out', "
            f"{str(tmp_path / 'out')!r}]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == ("capxai evaluate: capxai evaluate (its caption metrics) needs pycocoevalcap, "
                                     "which is not installed: pip install 'capxai[eval]'")
    assert not (tmp_path / "out").exists()
