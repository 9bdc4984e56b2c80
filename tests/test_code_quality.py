"""The code-quality gates run with the suite, so a laptop and CI check the same things."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.timeout(300)
def test_ruff_lint_is_clean() -> None:
    """ruff check finds nothing anywhere in the repository."""
    result = run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_ruff_format_is_clean() -> None:
    """Every file is formatted the way ruff format writes it."""
    result = run(str(BIN / "ruff"), "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(600)
def test_mypy_strict_is_clean() -> None:
    """mypy --strict passes on llm_es, projections and replay (config in pyproject.toml)."""
    result = run(str(BIN / "mypy"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_config_reference_matches_the_code() -> None:
    """The README's config table is the one generated from the config classes."""
    from llm_es.config import config_reference

    readme = (ROOT / "README.md").read_text()
    assert config_reference().strip() in readme


@pytest.mark.timeout(300)
def test_the_import_layers_hold() -> None:
    """lint-imports keeps every contract of pyproject.toml: replay -> projections -> llm_es,
    and inside llm_es the composition root -> service -> providers | store -> domain ->
    config, with a pure domain."""
    result = run(str(BIN / "lint-imports"))
    assert result.returncode == 0, result.stdout + result.stderr


MAX_MODULE_LINES = 400
"""Rooms of one job (STYLE.md): a module past this has more than one; split it by job."""


def test_no_module_of_the_packages_is_over_the_size_limit() -> None:
    """Every module of llm_es, projections and replay has at most MAX_MODULE_LINES lines."""
    oversized = {
        str(path.relative_to(ROOT)): lines
        for package in ("llm_es", "projections", "replay")
        for path in sorted((ROOT / package).rglob("*.py"))
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert oversized == {}
