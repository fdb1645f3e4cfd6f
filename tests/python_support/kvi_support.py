"""What the Python tests share: building a workspace binary or example with cargo (its path
from cargo's JSON messages: the target directory may be anywhere, CARGO_TARGET_DIR), and
stopping a started binary with SIGTERM."""

import json
import signal
import subprocess
from pathlib import Path

WORKSPACE = Path(__file__).resolve().parents[2]


def cargo_executable(build_args: list[str], target_name: str) -> str:
    """Runs `cargo build -q BUILD_ARGS --message-format=json`; the executable of target_name."""
    build = subprocess.run(
        ["cargo", "build", "-q", *build_args, "--message-format=json"],
        cwd=WORKSPACE,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        timeout=1800,
    )
    for line in build.stdout.splitlines():
        message = json.loads(line)
        if (message.get("reason") == "compiler-artifact"
                and message.get("executable")
                and message["target"]["name"] == target_name):
            return message["executable"]
    raise RuntimeError(f"cargo did not report the executable of {target_name}")


def stop(process: subprocess.Popen) -> int:
    """SIGTERM, then its exit code (killed, and the timeout raised, after 30 s)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
