"""The command line's error reports: expected errors as one line, bugs with their traceback,
and ``--debug`` / ``MOBILESAM_DEBUG=1`` showing the traceback of every error.

Each test replaces a command's function with one that raises, and calls
``mobilesam.cli.main`` in this process (no model is loaded).
"""

from __future__ import annotations

import pytest

from mobilesam.cli import CliError, bench, main, user_facing
from mobilesam.hub import DownloadError
from mobilesam.training.train import TrainingDiverged


def raising(monkeypatch, exc: BaseException) -> None:
    """Make ``mobilesam bench`` raise ``exc`` as soon as it runs."""

    def cmd_bench(args):
        raise exc

    monkeypatch.setattr(bench, "cmd_bench", cmd_bench)


def run_bench(capsys, tmp_path, *flags: str) -> tuple[int, list[str]]:
    """``mobilesam [flags] bench --checkpoint FILE``: the exit code and stderr's lines."""
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"")
    code = main([*flags, "bench", "--checkpoint", str(ckpt)])
    out, err = capsys.readouterr()
    assert out == ""
    return code, err.strip().splitlines()


@pytest.fixture(autouse=True)
def no_debug_env(monkeypatch):
    monkeypatch.delenv("MOBILESAM_DEBUG", raising=False)


USER_ERRORS = [
    ValueError("point (5000, 3) lies outside the 640x480 image"),
    FileNotFoundError(2, "No such file or directory", "/nowhere/photo.jpg"),
    OSError("cache shard 3 is damaged"),  # an OSError without a filename
    ImportError("this needs onnxruntime"),
    DownloadError("Downloading the 'mobilesam' weights failed: offline.", "http://x", "y"),
    TrainingDiverged("diverged by step 2: non-finite values in loss"),  # a RuntimeError
]


@pytest.mark.parametrize("exc", USER_ERRORS, ids=lambda e: type(e).__name__)
def test_expected_errors_are_one_line(capsys, monkeypatch, tmp_path, exc):
    assert user_facing(exc)
    raising(monkeypatch, exc)
    code, lines = run_bench(capsys, tmp_path)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("mobilesam: error: "), lines


@pytest.mark.parametrize(
    "exc",
    [KeyError("points_per_side"), TypeError("unsupported operand"), RuntimeError("shape '[1, 4]'")],
    ids=lambda e: type(e).__name__,
)
def test_unexpected_errors_keep_their_traceback(capsys, monkeypatch, tmp_path, exc):
    assert not user_facing(exc)
    raising(monkeypatch, exc)
    code, lines = run_bench(capsys, tmp_path)
    assert code == 1
    assert lines[0] == "Traceback (most recent call last):"
    assert any("in cmd_bench" in line for line in lines)  # where it was raised
    assert lines[-2].startswith(f"{type(exc).__name__}: ")  # Python's own last line
    assert lines[-1] == f"mobilesam: internal error, please report: {type(exc).__name__}: {exc}"


def test_debug_flag_shows_the_traceback_of_an_expected_error(capsys, monkeypatch, tmp_path):
    raising(monkeypatch, ValueError("bad --box"))
    code, lines = run_bench(capsys, tmp_path, "--debug")
    assert code == 1
    assert lines[0] == "Traceback (most recent call last):"
    assert "ValueError: bad --box" in lines
    assert lines[-1] == "mobilesam: error: bad --box"


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_debug_environment_variable(capsys, monkeypatch, tmp_path, value):
    monkeypatch.setenv("MOBILESAM_DEBUG", value)
    raising(monkeypatch, CliError("--point needs an image"))
    code, lines = run_bench(capsys, tmp_path)
    assert code == 2  # a usage error keeps its exit code
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == "mobilesam: error: --point needs an image"


@pytest.mark.parametrize("value", ["", "0", "off"])
def test_debug_environment_variable_off(capsys, monkeypatch, tmp_path, value):
    monkeypatch.setenv("MOBILESAM_DEBUG", value)
    raising(monkeypatch, ValueError("bad --box"))
    code, lines = run_bench(capsys, tmp_path)
    assert code == 1 and lines == ["mobilesam: error: bad --box"]


def test_debug_interrupt(capsys, monkeypatch, tmp_path):
    raising(monkeypatch, KeyboardInterrupt())
    code, lines = run_bench(capsys, tmp_path)
    assert code == 130 and lines == ["mobilesam: interrupted"]
    code, lines = run_bench(capsys, tmp_path, "--debug")
    assert (
        code == 130 and lines[0].startswith("Traceback") and lines[-1] == "mobilesam: interrupted"
    )


def test_debug_is_a_global_flag_in_the_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--debug" in out and "MOBILESAM_DEBUG=1" in out
