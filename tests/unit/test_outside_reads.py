"""The test command's check that no test reads beside the repository (tests/outside_reads.py):
a throwaway repository with a sibling directory, and pytest run on it in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.outside_reads import OutsideReads

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = """\
from pathlib import Path

from tests.outside_reads import install


def pytest_configure(config):
    install(config, Path(__file__).parent)
"""


def run_pytest(tmp_path: Path, test_source: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``tmp_path/repo`` holds the test; ``tmp_path/sibling/data.txt`` sits beside it."""
    (tmp_path / "sibling").mkdir()
    (tmp_path / "sibling" / "data.txt").write_text("from beside the repository\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pytest.ini").write_text("[pytest]\n")
    (repo / "conftest.py").write_text(CONFTEST)
    (repo / "inside.txt").write_text("inside\n")
    (repo / "test_reads.py").write_text(test_source)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "test_reads.py"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120,
    )


def test_a_test_that_opens_a_sibling_file_fails_the_run_and_is_named(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, (
        "def test_reads_a_sibling():\n"
        "    assert open('../sibling/data.txt').read()\n"
        "def test_reads_inside():\n"
        "    assert open('inside.txt').read()\n"
    ))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 passed" in result.stdout, "the tests themselves passed"
    assert "reads outside the repository" in result.stdout
    line = next(line for line in result.stdout.splitlines() if "opened by" in line)
    assert line.split() == [str(tmp_path / "sibling" / "data.txt"), "opened", "by",
                            "test_reads.py::test_reads_a_sibling"]


def test_under_xdist_a_workers_read_fails_the_run_too(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, (
        "def test_reads_a_sibling():\n"
        "    assert open('../sibling/data.txt').read()\n"
        "def test_reads_inside():\n"
        "    assert open('inside.txt').read()\n"
    ), "-n", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 passed" in result.stdout and "reads outside the repository" in result.stdout
    line = next(line for line in result.stdout.splitlines() if "opened by" in line)
    assert line.split()[:3] == [str(tmp_path / "sibling" / "data.txt"), "opened", "by"]
    assert line.split()[3] == "test_reads.py::test_reads_a_sibling"


def test_reads_at_collection_and_directory_listings_count_even_with_no_tests(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, (
        "import os\n"
        "from pathlib import Path\n"
        "SEED = (Path(__file__).resolve().parents[1] / 'sibling' / 'data.txt').read_text()\n"
        "LISTING = os.listdir(Path(__file__).resolve().parents[1] / 'sibling')\n"
    ))
    # Without the check pytest would exit 5 (no tests collected), which scripts/test accepts.
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{tmp_path / 'sibling' / 'data.txt'}  opened by collection of test_reads.py" in result.stdout
    assert f"{tmp_path / 'sibling'}  opened by collection of test_reads.py" in result.stdout


def test_reads_inside_the_repository_and_in_directories_the_run_creates_pass(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, (
        "from pathlib import Path\n"
        "def test_inside_and_new(tmp_path):\n"
        "    assert Path('inside.txt').read_text()\n"
        "    new = Path(__file__).resolve().parents[1] / 'made-by-the-run'\n"
        "    new.mkdir()\n"
        "    (new / 'f').write_text('x')\n"
        "    assert (new / 'f').read_text() == 'x'\n"
        "    (tmp_path / 'g').write_text('y')\n"
    ))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "outside the repository" not in result.stdout


def test_what_counts_as_beside_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "pytest-of-someone").mkdir()
    (tmp_path / "repo").mkdir()
    check = OutsideReads(tmp_path / "repo")
    assert check.outside(str(tmp_path / "data" / "seeds" / "x.txt"))
    assert check.outside(str(tmp_path / ".hidden" / "x"))
    assert not check.outside(str(tmp_path / "repo" / "tests" / "x"))
    assert not check.outside(str(tmp_path / "repo2-made-later" / "x")), "did not exist at start"
    assert not check.outside(str(tmp_path / "pytest-of-someone" / "x"))
    assert not check.outside("/usr/lib/python3/x.py")
    # A clone directly in the home directory: the user's dot-directories are not test data.
    monkeypatch.setenv("HOME", str(tmp_path))
    in_home = OutsideReads(tmp_path / "repo")
    assert not in_home.outside(str(tmp_path / ".hidden" / "x"))
    assert in_home.outside(str(tmp_path / "data" / "x"))
    # A repository directly under /: everything would be beside it, so nothing is checked.
    assert not OutsideReads(Path("/repo")).enabled
