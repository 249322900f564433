"""``helpline serve`` refuses bad configuration with one clear line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from app_fixtures import free_port


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HELPLINE_")}
    environment.update(HELPLINE_DATA_DIR=str(tmp_path / "var"), **env)
    return subprocess.run(
        [sys.executable, "-m", "helpline.cli", "serve", "--port", str(free_port())],
        env=environment, capture_output=True, text=True, timeout=120,
    )


def test_bad_settings_are_one_line_naming_the_environment_variables(tmp_path: Path) -> None:
    result = _serve(tmp_path, HELPLINE_CHAT_SEND_TIMEOUT_S="soon", AGENT_MODE="sleeping")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert error.startswith("Error: invalid settings: ") and "'soon'" in error and "'sleeping'" in error, error
    assert "HELPLINE_CHAT_SEND_TIMEOUT_S: " in error and "AGENT_MODE: " in error, error


@pytest.mark.parametrize("layout", ["missing", "no_weights"])
def test_a_bad_intent_model_dir_is_one_clear_error(tmp_path: Path, layout: str) -> None:
    model_dir = tmp_path / "model"
    if layout == "no_weights":
        model_dir.mkdir()
        (model_dir / "meta.json").write_text('{"format": 2}', encoding="utf-8")
    result = _serve(tmp_path, HELPLINE_INTENT_MODEL_DIR=str(model_dir))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and str(model_dir) in error[0], result.stderr


def test_a_bad_sensitive_topics_file_is_one_clear_error(tmp_path: Path) -> None:
    topics = tmp_path / "topics.yaml"
    topics.write_text("legal:\n  - lawyer\nfraud: 12\n", encoding="utf-8")
    result = _serve(tmp_path, HELPLINE_SENSITIVE_TOPICS_FILE=str(topics))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and str(topics) in error[0] and "fraud" in error[0], result.stderr
