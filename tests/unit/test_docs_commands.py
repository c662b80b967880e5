"""The commands of docs/real-models.md are pasted as they stand, so they must stay valid:
every ``bash`` block parses (``bash -n``), every ``trackset`` command in one has arguments the
CLI takes, and every YAML block and heredoc written there holds settings trackset accepts
(a renamed key or section fails here, not on a user's GPU machine).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from trackset.adapters import cotracker, sam3, vipe
from trackset.config.settings import Settings
from trackset.flows.cli import build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "real-models.md"
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
HEREDOC = re.compile(r"<<\s*'?(\w+)'?\n(.*?)\n\1$", re.MULTILINE | re.DOTALL)
VARIABLE = re.compile(r"\$\{?\w+\}?")


def blocks(language: str) -> list[str]:
    """The fenced blocks of ``language`` in the doc, indentation removed."""
    found = []
    for indent, lang, body in FENCE.findall(DOC.read_text()):
        if lang == language:
            found.append("\n".join(line.removeprefix(indent) for line in body.splitlines()))
    return found


def trackset_commands(script: str) -> list[list[str]]:
    """Each ``trackset ...`` command of a shell script, as arguments, variables replaced."""
    joined = re.sub(r"\\\n\s*", " ", HEREDOC.sub("", script))
    commands = []
    for line in joined.splitlines():
        words = shlex.split(VARIABLE.sub("/x", line), comments=True)
        if words and Path(words[0]).name == "trackset":
            commands.append(words[1:])
    return commands


def test_the_doc_has_what_these_tests_read():
    assert len(blocks("bash")) >= 4 and blocks("yaml")
    assert sum(len(trackset_commands(block)) for block in blocks("bash")) >= 3
    assert sum(len(HEREDOC.findall(block)) for block in blocks("bash")) == 2


@pytest.mark.parametrize("index", range(len(blocks("bash"))))
def test_every_shell_block_parses(index):
    script = blocks("bash")[index]
    result = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_every_trackset_command_takes_its_arguments():
    parser = build_parser()
    for block in blocks("bash"):
        for argv in trackset_commands(block):
            parser.parse_args(argv)  # exits (fails the test) on an unknown command or option


def test_every_settings_block_and_heredoc_is_valid_settings():
    documents = blocks("yaml") + [body for block in blocks("bash") for _, body in HEREDOC.findall(block)]
    for text in documents:
        data = yaml.safe_load(VARIABLE.sub("/x", text))
        Settings(**data)


@pytest.mark.parametrize("adapter", [vipe, sam3, cotracker], ids=lambda module: module.__name__.rpartition(".")[2])
def test_the_install_a_missing_package_line_names_is_a_command_of_the_doc(adapter):
    """What a run or check-models prints for a missing pip-installable model (ViPE needs
    ``--no-build-isolation``; SAM3 is on PyPI) is what the doc's install commands run."""
    command = re.search(r"pip install [^,;()]+", adapter.INSTALL)
    assert command is not None, adapter.INSTALL
    commands = [line.strip() for block in blocks("bash") for line in block.splitlines()]
    assert any(line.startswith(command.group(0).strip()) for line in commands), command.group(0)
