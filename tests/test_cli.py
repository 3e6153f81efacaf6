"""The command line: config errors, init/import/status/label end to end in a subprocess."""

import json

from bot.cli import main
from tests import imagegen
from tests.conftest import run_cli


def test_unknown_config_key_names_the_key(tmp_path):
    (tmp_path / "c.toml").write_text('data_dir = "d"\n[ingest]\nmax_pixelz = 5\n')
    result = run_cli("status", "--config", "c.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown key 'ingest.max_pixelz'" in result.stderr


def test_wrong_type_names_the_key(tmp_path):
    (tmp_path / "c.toml").write_text('[ingest]\nmax_pixels = "lots"\n')
    result = run_cli("status", "--config", "c.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "ingest.max_pixels: expected an integer, got 'lots'" in result.stderr


def test_missing_or_invalid_config_file(tmp_path):
    result = run_cli("--config", "nope.toml", "status", cwd=tmp_path)
    assert result.returncode == 2 and "config file not found: nope.toml" in result.stderr
    (tmp_path / "bad.toml").write_text("data_dir = \n")
    result = run_cli("status", "--config", "bad.toml", cwd=tmp_path)
    assert result.returncode == 2 and "not valid TOML" in result.stderr


def test_example_config_parses_and_documents_every_key():
    import tomllib
    from dataclasses import fields, is_dataclass

    from bot.config import Config, parse_config
    from tests.conftest import REPO_ROOT

    table = tomllib.loads((REPO_ROOT / "config.example.toml").read_text())
    assert parse_config(table, environ={}) == Config()

    def keys(cls, prefix=""):
        for f in fields(cls):
            if is_dataclass(f.type) or (isinstance(f.default_factory, type) and is_dataclass(f.default_factory)):
                yield from keys(f.default_factory, f"{prefix}{f.name}.")
            else:
                yield prefix + f.name

    def table_keys(t, prefix=""):
        for k, v in t.items():
            if isinstance(v, dict):
                yield from table_keys(v, f"{prefix}{k}.")
            else:
                yield prefix + k

    assert set(keys(Config)) == set(table_keys(table))


def test_init_import_status_label_round_trip(tmp_path):
    assert run_cli("init", cwd=tmp_path).returncode == 0
    assert (tmp_path / "data/illustfeed.db").is_file() and (tmp_path / "inbox").is_dir()
    (tmp_path / "inbox/alice").mkdir()
    (tmp_path / "inbox/alice/a.png").write_bytes(imagegen.png(1))
    (tmp_path / "inbox/alice/b.jpg").write_bytes(imagegen.jpeg(2))
    (tmp_path / "inbox/alice/c.jpg").write_bytes(b"")
    result = run_cli("import", "inbox", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["media_new"] == 2

    status = json.loads(run_cli("status", "--json", cwd=tmp_path).stdout)
    assert status["media_total"] == 2 and status["rejected_total"] == 1 and status["posts_total"] == 3
    assert status["by_label"] == {} and status["labels_total"] == 0 and status["active_model"] is None
    assert status["review_pending"] == 0

    from storage import Store

    with Store.open(tmp_path / "data") as store:
        sha = store.scalar("SELECT sha256 FROM media WHERE ext = 'png'")
    result = run_cli("label", sha[:10], "illustration", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    status = json.loads(run_cli("status", "--json", cwd=tmp_path).stdout)
    assert status["by_label"] == {"illustration": 1} and status["labels_total"] == 1

    result = run_cli("label", "999", "photo", cwd=tmp_path)
    assert result.returncode == 1 and "no media with id 999" in result.stderr


def test_import_of_missing_folder_is_a_clear_error(tmp_path):
    result = run_cli("import", "nowhere", cwd=tmp_path)
    assert result.returncode == 1 and "nowhere is not a directory" in result.stderr


def test_bad_log_level_and_out_of_range_values_name_the_key(tmp_path):
    (tmp_path / "c.toml").write_text('log_level = "LOUD"\n')
    result = run_cli("status", "--config", "c.toml", cwd=tmp_path)
    assert result.returncode == 2 and "log_level: expected one of DEBUG, INFO, WARNING, ERROR" in result.stderr
    (tmp_path / "c.toml").write_text("[ingest]\nmax_pixels = -5\n")
    result = run_cli("status", "--config", "c.toml", cwd=tmp_path)
    assert result.returncode == 2 and "ingest.max_pixels: must be at least 1, got -5" in result.stderr


def test_data_dir_that_is_a_file_or_a_corrupt_database_is_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    result = run_cli("status", cwd=tmp_path, env={"ILLUSTFEED_DATA_DIR": "afile"})
    assert result.returncode == 1 and "cannot use data dir afile" in result.stderr
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/illustfeed.db").write_bytes(b"garbage" * 1000)
    result = run_cli("status", cwd=tmp_path, env={"ILLUSTFEED_DATA_DIR": "broken"})
    assert result.returncode == 1 and "cannot open database" in result.stderr
    assert (tmp_path / "broken/illustfeed.db").read_bytes() == b"garbage" * 1000  # left as it was


def test_debug_logging_never_shows_credentials(capsys):
    import logging

    import responses
    import tweepy

    from bot.cli import configure_logging

    secret = "SECRET-BEARER-123"
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        root.handlers.clear()
        configure_logging("DEBUG")
        with responses.RequestsMock() as mocked:
            mocked.get(
                "https://api.twitter.com/2/users/by/username/someone",
                json={"data": {"id": "1", "name": "S", "username": "someone"}},
            )
            tweepy.Client(bearer_token=secret).get_user(username="someone")
        logging.getLogger("bot").debug("a debug line from our own code")
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
    captured = capsys.readouterr()
    assert "a debug line from our own code" in captured.err  # DEBUG really is on
    assert secret not in captured.err + captured.out


def test_redacted_config_hides_secrets():
    from bot.config import parse_config, redacted

    config = parse_config({}, environ={"ILLUSTFEED_DISCORD_TOKEN": "tok-123", "ILLUSTFEED_X_BEARER_TOKEN": "xb-456"})
    text = repr(redacted(config))
    assert "tok-123" not in text and "xb-456" not in text and "***" in text


def test_bench_needs_a_labelled_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ILLUSTFEED_BENCH_DATA", raising=False)
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    assert main(["bench", "--config", str(config)]) == 1
    assert "give --data DIR" in capsys.readouterr().err


def test_status_names_the_shipped_default_and_never_loads_torch(tmp_path):
    import subprocess
    import sys

    from classifier.model import read_model_file
    from classifier.versions import default_model_file

    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    probe = (
        "import sys; from bot.cli import main; code = main(['--config', sys.argv[1], 'status']); "
        "assert 'torch' not in sys.modules, 'status imported torch'; sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    shipped = read_model_file(default_model_file()).version  # the VERSION file beside the model says the same
    assert f"active model: {shipped} (the shipped default; no trained model yet)" in result.stdout
