"""The registries, the CLI, the Discord commands, the README and the example config stay in step.

In the spirit of sqlite-utils' tests/test_docs.py: adding a network, an explanation method, a chat command
or a CLI command without documenting it fails here, naming what is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.chat.commands import CHAT_COMMANDS
from bot.cli import build_parser
from bot.sources import HANDLE_HELP, NETWORK_NAMES
from explain import METHOD_NAMES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLE_CONFIG = (ROOT / "config.example.toml").read_text()


def subcommands() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def option_choices(command: str, dest: str) -> tuple:
    parser = subcommands()[command]
    return tuple(next(a for a in parser._actions if a.dest == dest).choices)


def discord_tree():
    pytest.importorskip("discord")
    from bot.chat.discord_bot import IllustfeedBot
    from bot.config import DiscordConfig
    from storage import Store

    return IllustfeedBot(DiscordConfig(token="x"), Store.__new__(Store)).tree


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_cli_command_is_in_the_readme(command):
    assert f"illustfeed {command}" in README


@pytest.mark.parametrize("network", NETWORK_NAMES)
def test_every_network_is_in_the_cli_discord_readme_and_example_config(network):
    assert network in option_choices("follow", "source") and network in option_choices("unfollow", "source")
    follow = discord_tree().get_command("follow")
    assert network in [choice.value for choice in follow.get_parameter("source").choices]
    assert f"[sources.{network}]" in EXAMPLE_CONFIG
    assert re.search(rf"^### .*\b{network}\b", README, re.IGNORECASE | re.MULTILINE), f"no README section for {network}"
    assert f"{network}:" in HANDLE_HELP


def test_the_handle_help_fits_a_discord_option_description():
    assert len(HANDLE_HELP) <= 100  # Discord's limit for option descriptions


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_explanation_method_is_in_the_cli_discord_and_readme(method):
    assert method in option_choices("explain", "method")
    why = discord_tree().get_command("why")
    assert method in [choice.value for choice in why.get_parameter("method").choices]
    assert f"`{method}`" in README or f"|{method}" in README or f"{method}|" in README


@pytest.mark.parametrize("command", sorted(CHAT_COMMANDS))
def test_every_chat_command_is_a_slash_command_and_in_the_readme(command):
    slash = discord_tree().get_command(command)
    assert slash is not None and slash.description == CHAT_COMMANDS[command]
    assert f"`/{command}" in README


def test_the_readme_layout_table_matches_the_tree():
    section = README[README.index("## Layout") : README.index("## Data and safety")]
    listed = set(re.findall(r"`((?:bot|storage|classifier|explain)/[a-z_/]*(?:\.py)?)`", section))
    for path in listed:
        assert (ROOT / path).exists(), f"README Layout names {path}, which does not exist"
    stages = {p.name for p in (ROOT / "bot").iterdir() if p.name != "__pycache__" and not p.name.startswith("__")}
    documented = {path.split("/")[1] for path in listed if path.startswith("bot/") and path.count("/") >= 1}
    assert stages - documented == set(), f"bot/ entries missing from the README Layout table: {stages - documented}"
