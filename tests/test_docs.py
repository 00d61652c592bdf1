"""The documentation site: every public name in the API reference, every example and
results page in the site, and the site built with `mkdocs build --strict`."""

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import metaplastic as mp


ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def public_modules():
    """The package's public modules, `metaplastic.nn`, ... (not a module that an import hook,
    such as jaxtyping's in the test run, put into the package's namespace)."""
    return {
        f"metaplastic.{name}": value
        for name, value in vars(mp).items()
        if isinstance(value, types.ModuleType)
        and not name.startswith("_")
        and value.__name__ == f"metaplastic.{name}"
    }


def public_names():
    """Every public name: `metaplastic.X` for the package's own names, `metaplastic.m.X` for
    each public module's `__all__`, with the object it names."""
    names = {
        f"metaplastic.{name}": value
        for name, value in vars(mp).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    for path, module in public_modules().items():
        assert hasattr(module, "__all__"), f"{path} declares no __all__"
        for member in module.__all__:
            names[f"{path}.{member}"] = getattr(module, member)
    return names


def directives():
    """The objects the API reference renders: its `::: metaplastic...` lines."""
    text = "".join(p.read_text() for p in sorted((DOCS / "api").glob("*.md")))
    return set(re.findall(r"^::: *(\S+)\s*$", text, re.M))


def test_every_public_name_is_in_the_api_reference():
    rendered = directives()
    missing = []
    for path, obj in public_names().items():
        parts = path.split(".")
        module = ".".join(parts[:2])  # a module's directive renders every name of its __all__
        alias = f"metaplastic.{parts[-1]}"  # the same object rendered under the package's name
        if path in rendered or (len(parts) == 3 and module in rendered):
            continue
        if getattr(mp, parts[-1], None) is obj and alias in rendered:
            continue
        missing.append(path)
    assert not missing, f"not in docs/api/*.md: {missing}"
    for target in rendered:  # and every directive names a public object
        assert target in public_names() or target in public_modules(), (
            f"docs/api renders {target}, which is not a public name"
        )


def test_every_example_and_results_page_is_in_the_site():
    nav = (ROOT / "mkdocs.yml").read_text()
    scripts = sorted(p.stem for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
    pages = sorted(p.stem for p in (DOCS / "examples").glob("*.md") if p.stem != "index")
    assert pages == scripts, "one page per example script in docs/examples/"
    for name in scripts:
        assert f"examples/{name}.md" in nav, f"docs/examples/{name}.md is not in the nav"
    results = sorted(p.name for p in (ROOT / "examples" / "results").glob("*.md"))
    for name in results:
        assert f"results/{name}" in nav, f"examples/results/{name} is not in the nav"
    assert "results.md" in nav  # examples/RESULTS.md


def test_documentation_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    site = tmp_path / "site"
    page = (site / "api" / "fitting" / "index.html").read_text()
    assert "steps_per_call" in page  # the reference is generated from the docstrings
    html = "".join(p.read_text() for p in (site / "api").rglob("index.html"))
    anchors = set(re.findall(r'id="(metaplastic\.[^"]+)"', html))
    missing = []
    for path, obj in public_names().items():
        alias = f"metaplastic.{path.split('.')[-1]}"
        if path not in anchors and not (
            getattr(mp, path.split(".")[-1], None) is obj and alias in anchors
        ):
            missing.append(path)
    assert not missing, f"rendered nowhere in the API reference: {missing}"
    # The results pages and their figures are in the site, read from examples/results.
    assert (site / "results" / "drosophila_held_out_curve.png").read_bytes().startswith(b"\x89PNG")
    results = (site / "results" / "drosophila" / "index.html").read_text()
    assert 'src="../drosophila_held_out_curve.png"' in results
    assert (site / "examples" / "nwb_flies" / "index.html").exists()
