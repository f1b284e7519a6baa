"""Live progress on a terminal, plain log lines elsewhere; submit's config checks and ids."""
from __future__ import annotations

import io

import pytest

from pipeline.build.config import load_config
from zoo_schema.errors import ConfigError
from pipeline.build.progress import CLEAR, Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_redraws_one_status_line_on_a_terminal():
    out = Terminal()
    p = Progress(out)
    p.update("jobs: 1/4")
    p.log("[1/4] a result")
    p.update("jobs: 2/4")
    p.close()
    text = out.getvalue()
    # the log line is printed above the status line, which is then redrawn
    assert text == f"{CLEAR}jobs: 1/4{CLEAR}[1/4] a result\njobs: 1/4{CLEAR}jobs: 2/4\n"


def test_progress_is_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    p = Progress(out)
    p.update("jobs: 1/4")
    p.log("[1/4] a result")
    p.close()
    assert out.getvalue() == "[1/4] a result\n"


def test_submitted_config_needs_shared_locations_and_gets_a_stable_id(tmp_path, monkeypatch):
    from pipeline.commands.submit import cluster_config, submission_base
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="relative path"):
        cluster_config(load_config(None, {"zoo": "./zoo", "mlflow.tracking_uri": "http://m:5000"}))
    with pytest.raises(ConfigError, match="mlflow.tracking_uri is not set"):
        cluster_config(load_config(None, {"zoo": "s3://b/zoo"}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    config = cluster_config(load_config(None, {"zoo": "s3://b/my_zoo", "datasets": ["s3://b/data"]}))
    assert config.address == "auto" and config.mlflow.tracking_uri == "http://mlflow:5000"
    sid = submission_base(config)
    assert sid.startswith("tans-my-zoo-") and sid == submission_base(config)
    other = cluster_config(load_config(None, {"zoo": "s3://b/my_zoo", "max_jobs": 7}))
    assert submission_base(other) != sid


def test_zoo_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TANS_ZOO", "s3://bucket/zoo")
    assert load_config(None).zoo == "s3://bucket/zoo"
    cfg = tmp_path / "b.toml"
    cfg.write_text('zoo = "/data/zoo"\n')
    assert load_config(str(cfg)).zoo == "/data/zoo"  # the file wins
