"""Fixtures: the emulator binary, built once, started fresh for each test.

The binary is built with cargo (in the workspace's target directory) and started with the
topics and subscriptions a test needs; its first stdout line is a JSON object with the
connection string. It is stopped with SIGTERM and must exit 0.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "tests" / "python_support"))
from kvi_support import cargo_executable, stop  # noqa: E402

PACKAGE = "keyvault-invalidator-servicebus-emulator"
WORKSPACE = Path(__file__).resolve().parents[4]
TOPIC = "keyvault-events"
SUBSCRIPTION = "check"
MAX_DELIVERY_COUNT = 3


@pytest.fixture(scope="session")
def emulator_binary() -> str:
    """Builds the binary once; its path, as cargo reports it."""
    return cargo_executable(["-p", PACKAGE, "--bin", PACKAGE], PACKAGE)


class Emulator:
    def __init__(self, binary: str, args: list[str]):
        self.process = subprocess.Popen(
            [binary, *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if not line:
            self.process.kill()
            raise RuntimeError(f"the emulator exited with {self.process.wait()} before it started")
        self.info = json.loads(line)
        self.connection_string = self.info["connection_string"]

    def stop(self) -> int:
        return stop(self.process)


@pytest.fixture
def start_emulator(emulator_binary):
    """Starts emulators with the given arguments; stops them after the test (exit 0)."""
    started = []

    def start(*args: str) -> Emulator:
        emulator = Emulator(emulator_binary, list(args))
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        assert emulator.stop() == 0


@pytest.fixture
def emulator(start_emulator) -> Emulator:
    """One topic with one subscription, MaxDeliveryCount 3, a 30 s lock."""
    return start_emulator(
        "--topic", TOPIC,
        "--subscription", SUBSCRIPTION,
        "--max-delivery-count", str(MAX_DELIVERY_COUNT),
        "--lock-duration", "30",
    )
