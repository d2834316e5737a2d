"""Log lines: text or one JSON object per line, with credentials masked wherever they appear."""
from __future__ import annotations

import io
import json
import logging
import uuid

import click
import pytest
from click.testing import CliRunner

from cstore.errors import ConfigError
from cstore.cli import log_format_option
from cstore.ops import MASK, RedactingFilter, setup_logging


@pytest.fixture
def logger():
    """A private logger (not the root one, which pytest's own capture uses)."""
    lg = logging.getLogger("cstore.test." + uuid.uuid4().hex[:8])
    lg.propagate = False
    yield lg
    for h in list(lg.handlers):
        lg.removeHandler(h)


def lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


def test_json_lines_have_the_fields_and_extras(logger, monkeypatch):
    monkeypatch.delenv("CSTORE_PASSWORD", raising=False)
    buf = io.StringIO()
    setup_logging("json", "INFO", stream=buf, logger=logger)
    logger.info("batch committed in %d ms", 4, extra={"model": "fraud", "events": 512, "version": 41,
                                                     "partitions": [1, 2]})
    logger.debug("not shown at INFO")
    (line,) = lines(buf)
    rec = json.loads(line)
    assert rec["message"] == "batch committed in 4 ms"
    assert rec["level"] == "INFO" and rec["logger"] == logger.name
    assert rec["time"].endswith("Z") and "T" in rec["time"]
    assert (rec["model"], rec["events"], rec["version"], rec["partitions"]) == ("fraud", 512, 41, [1, 2])
    assert list(rec)[:4] == ["time", "level", "logger", "message"]


def test_json_exception_stays_on_one_line(logger):
    buf = io.StringIO()
    setup_logging("json", "INFO", stream=buf, logger=logger)
    try:
        raise RuntimeError("commit failed\nsecond line")
    except RuntimeError:
        logger.exception("batch %s lost its lease", "b-17")
    (line,) = lines(buf)
    rec = json.loads(line)
    assert rec["level"] == "ERROR" and rec["message"] == "batch b-17 lost its lease"
    assert "RuntimeError: commit failed" in rec["exc"] and "Traceback" in rec["exc"]


def test_text_lines_carry_extras_as_key_value(logger):
    buf = io.StringIO()
    setup_logging("text", "DEBUG", stream=buf, logger=logger)
    logger.warning("lease lost", extra={"partition": 7, "owner": "worker b"})
    (line,) = lines(buf)
    assert line.endswith(f' WARNING {logger.name}: lease lost partition=7 owner="worker b"')


def test_the_password_is_masked_everywhere(logger, monkeypatch):
    monkeypatch.setenv("CSTORE_PASSWORD", "env-s3cret")
    buf = io.StringIO()
    redactor = setup_logging("json", "INFO", stream=buf, logger=logger)
    redactor.add_secret("cfg-Pa55word")  # the config file's password, known once the config is loaded
    logger.info("login as %s with %s", "cstore", "cfg-Pa55word")
    logger.info("env says env-s3cret", extra={"detail": {"note": "pw env-s3cret"}, "password": "anything"})
    logger.info("CSTORE_PASSWORD=abc123 password: 'xyz' {\"token\": \"t0k\"} url=cql://u:hunter2@db:9042")
    logger.info("Authorization: Basic dXNlcjpwYXNz")
    try:
        raise ValueError("auth failed for password cfg-Pa55word")
    except ValueError:
        logger.exception("connect failed")
    text = buf.getvalue()
    for secret in ("cfg-Pa55word", "env-s3cret", "abc123", "xyz", "t0k", "hunter2", "dXNlcjpwYXNz", "anything"):
        assert secret not in text, secret
    recs = [json.loads(x) for x in lines(buf)]
    assert recs[0]["message"] == f"login as cstore with {MASK}"
    assert recs[1]["password"] == MASK and recs[1]["detail"] == {"note": f"pw {MASK}"}
    assert "url=cql://u:***@db:9042" in recs[2]["message"]
    assert f"auth failed for password {MASK}" in recs[4]["exc"]


def test_text_format_is_masked_too_and_ordinary_words_survive(logger):
    buf = io.StringIO()
    setup_logging("text", "INFO", stream=buf, logger=logger, secrets=["hunter2"])
    logger.info("password refused for user bob (hunter2); check CSTORE_PASSWORD", extra={"api_key": "k-1"})
    (line,) = lines(buf)
    assert "hunter2" not in line and "k-1" not in line
    assert "password refused for user bob (***); check CSTORE_PASSWORD api_key=***" in line


def test_the_filter_covers_records_from_child_loggers(logger):
    buf = io.StringIO()
    setup_logging("text", "INFO", stream=buf, logger=logger, secrets=["hunter2"])
    logger.getChild("driver").error("bad login hunter2")
    assert "hunter2" not in buf.getvalue() and "bad login ***" in buf.getvalue()


def test_setup_again_replaces_its_handler(logger):
    first, second = io.StringIO(), io.StringIO()
    setup_logging("text", "INFO", stream=first, logger=logger)
    setup_logging("json", "INFO", stream=second, logger=logger)
    logger.info("once")
    assert first.getvalue() == "" and json.loads(second.getvalue())["message"] == "once"
    assert sum(1 for h in logger.handlers if getattr(h, "_cstore", False)) == 1


def test_environment_chooses_format_and_level(logger, monkeypatch):
    monkeypatch.setenv("CSTORE_LOG_FORMAT", "json")
    monkeypatch.setenv("CSTORE_LOG_LEVEL", "warning")
    buf = io.StringIO()
    setup_logging(stream=buf, logger=logger)
    logger.info("hidden")
    logger.warning("shown")
    assert [json.loads(x)["message"] for x in lines(buf)] == ["shown"]


def test_bad_format_or_level_is_a_config_error(logger):
    with pytest.raises(ConfigError, match="log format"):
        setup_logging("xml", logger=logger)
    with pytest.raises(ConfigError, match="log level"):
        setup_logging("text", "LOUD", logger=logger)


def test_redact_leaves_plain_text_alone():
    r = RedactingFilter(["", None])  # empty secrets are ignored, not matched everywhere
    assert r.redact("committed 12 chunks at version 41") == "committed 12 chunks at version 41"


def test_log_format_option_for_click_commands(monkeypatch):
    @click.command()
    @log_format_option
    def cmd(log_format: str) -> None:
        click.echo(log_format)

    monkeypatch.delenv("CSTORE_LOG_FORMAT", raising=False)
    runner = CliRunner()
    assert runner.invoke(cmd, []).output == "text\n"
    assert runner.invoke(cmd, ["--log-format", "json"]).output == "json\n"
    assert runner.invoke(cmd, [], env={"CSTORE_LOG_FORMAT": "json"}).output == "json\n"
    assert runner.invoke(cmd, ["--log-format", "xml"]).exit_code == 2
