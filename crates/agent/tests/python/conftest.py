"""Fixtures: the kvi-agent binary, built once with cargo, started with --demo for each test.

The demo listens on a port the OS picks (`--listen 127.0.0.1:0`); its first stdout line says
where ("kvi-agent demo on http://127.0.0.1:PORT: ..."). The token comes from KVI_AGENT_TOKEN.
It is stopped with SIGTERM and must exit 0. Python's standard library only (and pytest).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "tests" / "python_support"))
from kvi_support import cargo_executable, stop  # noqa: E402

PACKAGE = "keyvault-invalidator-agent"
BINARY = "kvi-agent"
TOKEN = "python-client-token-0123456789"


@pytest.fixture(scope="session")
def agent_binary() -> str:
    """Builds the binary once; its path, as cargo reports it."""
    return cargo_executable(["-p", PACKAGE, "--bin", BINARY], BINARY)


class Demo:
    def __init__(self, binary: str, rotate_every: int):
        env = dict(os.environ, KVI_AGENT_TOKEN=TOKEN)
        self.process = subprocess.Popen(
            [binary, "--demo", "--listen", "127.0.0.1:0", "--rotate-every", str(rotate_every)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        line = self.process.stdout.readline()
        found = re.match(r"kvi-agent demo on (http://127\.0\.0\.1:\d+):", line)
        if not found:
            self.process.kill()
            raise RuntimeError(f"unexpected first line {line!r} (exit {self.process.wait()})")
        self.base = found.group(1)
        self.token = TOKEN

    def stop(self) -> int:
        return stop(self.process)


@pytest.fixture
def demo(agent_binary):
    """A demo agent rotating demo-secret every 2 seconds; stopped after the test (exit 0)."""
    started = Demo(agent_binary, rotate_every=2)
    yield started
    assert started.stop() == 0
