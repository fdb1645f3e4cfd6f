"""End to end: our job on our Service Bus source against the emulator binary, checked with
Microsoft's client.

The official client publishes a malformed payload to the topic; the `servicebus` example (the
job on `ServiceBusSource`, reading an existing subscription) dead-letters it; the official
client then reads the dead-letter sub-queue and must see our `MalformedPayload` reason and the
parser's error as the description: the reason travels with the message on the wire
(`com.microsoft:dead-letter`), as the service carries it.
"""

import json
import os
import signal
import subprocess
import time

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue

from kvi_support import cargo_executable
from conftest import SUBSCRIPTION, TOPIC, WORKSPACE

MALFORMED = b'{"id":"bad-1","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{}}'


def built_example(name: str) -> str:
    return cargo_executable(["--example", name, "--features", "servicebus"], name)


@pytest.fixture(scope="session")
def servicebus_example() -> str:
    return built_example("servicebus")


@pytest.fixture(scope="session")
def parse_error() -> str:
    """What our parser says of the malformed payload, from the `inspect` example."""
    inspect = subprocess.run(
        [built_example("inspect"), "-"],
        input=MALFORMED,
        stderr=subprocess.PIPE,
        timeout=60,
    )
    assert inspect.returncode == 1
    line = inspect.stderr.decode().strip()
    assert line.startswith("error: ")
    return line[len("error: "):]


def test_our_job_dead_letters_a_malformed_payload_with_its_reason_for_the_official_client(
        start_emulator, servicebus_example, parse_error):
    emulator = start_emulator(
        "--topic", TOPIC, "--subscription", SUBSCRIPTION, "--lock-duration", "30")
    environment = dict(os.environ)
    environment.update({
        "SERVICEBUS_CONNECTION_STRING": f"{emulator.connection_string};EntityPath={TOPIC}",
        "SERVICEBUS_SUBSCRIPTION": SUBSCRIPTION,
        "RUST_LOG": "error",
    })
    job = subprocess.Popen(
        [servicebus_example], env=environment, stdout=subprocess.PIPE, text=True)
    try:
        # Log lines (stdout too) may come first.
        for _ in range(50):
            line = job.stdout.readline()
            if not line or line.startswith("receiving on subscription"):
                break
        assert line.startswith(f"receiving on subscription {SUBSCRIPTION}"), line
        with ServiceBusClient.from_connection_string(emulator.connection_string) as client:
            with client.get_topic_sender(TOPIC) as sender:
                sender.send_messages(ServiceBusMessage(MALFORMED, message_id="bad-1"))
            dead = []
            deadline = time.monotonic() + 60
            with client.get_subscription_receiver(
                    TOPIC, SUBSCRIPTION, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as receiver:
                while not dead and time.monotonic() < deadline:
                    dead = receiver.receive_messages(max_message_count=10, max_wait_time=2)
                assert len(dead) == 1, "the job dead-lettered the one message"
                message = dead[0]
                assert b"".join(message.body) == MALFORMED
                assert message.message_id == "bad-1"
                assert message.dead_letter_reason == "MalformedPayload"
                assert message.dead_letter_error_description == parse_error
                receiver.complete_message(message)
            with client.get_subscription_receiver(TOPIC, SUBSCRIPTION) as receiver:
                assert receiver.peek_messages(max_message_count=10) == [], \
                    "nothing is left in the subscription"
    finally:
        job.send_signal(signal.SIGINT)
        out, _ = job.communicate(timeout=60)
    assert job.returncode == 0
    assert "dead-lettered 1" in out
