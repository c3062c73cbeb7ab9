"""Ctrl-C (SIGINT) before a command starts ends with one line and exit code 130."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

# Sends this process SIGINT while ``blocklab.cli.build_parser`` imports the
# command modules, the part of start-up that follows the import of
# ``blocklab`` itself.
INTERRUPT_DURING_PARSER_BUILD = """
import importlib, os, signal, sys
real_import_module = importlib.import_module

def interrupt_on_train(name, package=None):
    if name == "blocklab.train":
        os.kill(os.getpid(), signal.SIGINT)
    return real_import_module(name, package)

importlib.import_module = interrupt_on_train
from blocklab.cli import main
sys.exit(main(["train", "--list-fields"]))
"""


def test_interrupt_while_building_parser():
    finished = subprocess.run([sys.executable, "-c", INTERRUPT_DURING_PARSER_BUILD], capture_output=True,
                              text=True, timeout=120)
    assert finished.returncode == 130, finished.stderr
    assert finished.stderr == "blocklab train: interrupted\n"
    assert finished.stdout == ""


def test_interrupt_names_no_command_when_none_given():
    script = INTERRUPT_DURING_PARSER_BUILD.replace('main(["train", "--list-fields"])', 'main(["--verbose"])')
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 130, finished.stderr
    assert finished.stderr == "blocklab: interrupted\n"


# 0.1 s after start the process is importing torch (about a second on a
# 2-core CPU). The CLI defers SIGINT until the imports finish, because
# torch 2.13 swallows an interrupt that lands while it imports numpy.
def test_interrupt_while_importing_torch():
    process = subprocess.Popen([sys.executable, "-m", "blocklab", "train", "--list-fields"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.1)
    assert process.poll() is None
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert err == "blocklab train: interrupted\n"


@pytest.mark.parametrize("delay", [0.2, 0.3, 0.4])
def test_interrupt_at_several_start_up_moments(delay):
    process = subprocess.Popen([sys.executable, "-m", "blocklab", "train", "--list-fields"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    if process.poll() is not None:
        pytest.skip(f"the command finished within {delay} s, before the signal")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert err == "blocklab train: interrupted\n"
