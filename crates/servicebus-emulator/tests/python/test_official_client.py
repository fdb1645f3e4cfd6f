"""Microsoft's official Python client (azure-servicebus, pyamqp) against the emulator binary.

Where the official client and the emulator disagree, the emulator is wrong.
"""

import datetime
import subprocess
import time
import uuid

import pytest
from azure.servicebus import (
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)

from conftest import MAX_DELIVERY_COUNT, SUBSCRIPTION, TOPIC

WAIT = 10  # seconds: generous, a receive returns as soon as a message is there


def client(emulator) -> ServiceBusClient:
    return ServiceBusClient.from_connection_string(emulator.connection_string)


def send(sb: ServiceBusClient, *messages: ServiceBusMessage) -> None:
    with sb.get_topic_sender(TOPIC) as sender:
        sender.send_messages(list(messages) if len(messages) > 1 else messages[0])


def receive_one(receiver):
    messages = receiver.receive_messages(max_message_count=1, max_wait_time=WAIT)
    assert len(messages) == 1, messages
    return messages[0]


def test_the_first_line_describes_the_emulator(emulator):
    info = emulator.info
    port = info["amqp_port"]
    assert info["amqp_url"] == f"amqp://127.0.0.1:{port}"
    assert info["connection_string"].startswith(
        f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey="
    )
    assert info["connection_string"].endswith(";UseDevelopmentEmulator=true")
    assert info["management_endpoint"].startswith("http://127.0.0.1:")
    assert info["topics"] == [{"name": TOPIC, "subscriptions": [SUBSCRIPTION]}]


def test_send_receive_complete(emulator):
    with client(emulator) as sb:
        send(sb, ServiceBusMessage("hello", message_id="m-1", application_properties={"kind": "test"}))
        with sb.get_subscription_receiver(TOPIC, SUBSCRIPTION) as receiver:
            message = receive_one(receiver)
            assert str(message) == "hello"
            assert message.message_id == "m-1"
            assert message.application_properties == {b"kind": b"test"}
            assert message.sequence_number == 1
            receiver.complete_message(message)
            assert receiver.receive_messages(max_wait_time=1) == []
            assert receiver.peek_messages(max_message_count=10) == []


def test_a_batch_is_published_message_by_message(emulator):
    with client(emulator) as sb:
        send(sb, ServiceBusMessage("one"), ServiceBusMessage("two"))
        with sb.get_subscription_receiver(TOPIC, SUBSCRIPTION) as receiver:
            bodies = []
            while len(bodies) < 2:
                for message in receiver.receive_messages(max_message_count=2, max_wait_time=WAIT):
                    bodies.append(str(message))
                    receiver.complete_message(message)
            assert bodies == ["one", "two"]


def test_the_first_delivery_counts_zero_and_the_lock_token_is_tag_and_annotation(emulator):
    with client(emulator) as sb:
        send(sb, ServiceBusMessage("counted"))
        with sb.get_subscription_receiver(TOPIC, SUBSCRIPTION) as receiver:
            message = receive_one(receiver)
            assert message.delivery_count == 0
            annotation = message.raw_amqp_message.annotations[b"x-opt-lock-token"]
            assert isinstance(annotation, uuid.UUID)
            assert len(message._delivery_tag) == 16
            # .NET byte order: what the client's `lock_token` reads from the tag.
            assert uuid.UUID(bytes_le=bytes(message._delivery_tag)) == annotation
            assert message.lock_token == annotation
            receiver.complete_message(message)


def test_abandon_until_max_delivery_count_then_read_the_dead_letter_queue(emulator):
    with client(emulator) as sb:
        send(sb, ServiceBusMessage("poison", message_id="p-1"))
        with sb.get_subscription_receiver(TOPIC, SUBSCRIPTION) as receiver:
            for expected in range(MAX_DELIVERY_COUNT):
                message = receive_one(receiver)
                assert str(message) == "poison"
                assert message.delivery_count == expected
                receiver.abandon_message(message)
            assert receiver.receive_messages(max_wait_time=1) == []
        with sb.get_subscription_receiver(
            TOPIC, SUBSCRIPTION, sub_queue=ServiceBusSubQueue.DEAD_LETTER
        ) as dead_letters:
            message = receive_one(dead_letters)
            assert str(message) == "poison"
            assert message.message_id == "p-1"
            assert message.dead_letter_reason == "MaxDeliveryCountExceeded"
            assert message.dead_letter_error_description == (
                f"Message could not be consumed after {MAX_DELIVERY_COUNT} delivery attempts."
            )
            dead_letters.complete_message(message)
            assert dead_letters.receive_messages(max_wait_time=1) == []


def test_dead_letter_with_a_reason_and_a_description(emulator):
    with client(emulator) as sb:
        send(sb, ServiceBusMessage("not json"))
        with sb.get_subscription_receiver(TOPIC, SUBSCRIPTION) as receiver:
            message = receive_one(receiver)
            receiver.dead_letter_message(
                message, reason="MalformedPayload", error_description="event 0: expected value"
            )
            assert receiver.receive_messages(max_wait_time=1) == []
        with sb.get_subscription_receiver(
            TOPIC, SUBSCRIPTION, sub_queue=ServiceBusSubQueue.DEAD_LETTER
        ) as dead_letters:
            message = receive_one(dead_letters)
            assert str(message) == "not json"
            assert message.dead_letter_reason == "MalformedPayload"
            assert message.dead_letter_error_description == "event 0: expected value"
            dead_letters.complete_message(message)


def test_renewing_a_lock_returns_a_later_time(emulator):
    with client(emulator) as sb:
        send(sb, ServiceBusMessage("slow"))
        with sb.get_subscription_receiver(TOPIC, SUBSCRIPTION) as receiver:
            message = receive_one(receiver)
            first = message.locked_until_utc
            assert first > datetime.datetime.now(datetime.timezone.utc)
            time.sleep(0.2)
            renewed = receiver.renew_message_lock(message)
            assert renewed > first
            assert message.locked_until_utc == renewed
            receiver.complete_message(message)


def test_peek_shows_messages_without_locking_them(emulator):
    with client(emulator) as sb:
        send(sb, ServiceBusMessage("a"), ServiceBusMessage("b"), ServiceBusMessage("c"))
        with sb.get_subscription_receiver(TOPIC, SUBSCRIPTION) as receiver:
            peeked = receiver.peek_messages(max_message_count=10)
            assert [str(m) for m in peeked] == ["a", "b", "c"]
            assert [m.sequence_number for m in peeked] == [1, 2, 3]
            received = []
            while len(received) < 3:
                for message in receiver.receive_messages(max_message_count=3, max_wait_time=WAIT):
                    received.append(message)
                    receiver.complete_message(message)
            received.sort(key=lambda m: m.sequence_number)
            # Whatever the client prefetched and released before is not counted.
            assert [(str(m), m.delivery_count) for m in received] == [("a", 0), ("b", 0), ("c", 0)]


def test_an_empty_receive_returns_within_a_few_seconds(emulator):
    with client(emulator) as sb:
        with sb.get_subscription_receiver(TOPIC, SUBSCRIPTION) as receiver:
            started = time.monotonic()
            assert receiver.receive_messages(max_wait_time=1) == []
            assert time.monotonic() - started < 10


def test_receive_and_delete(emulator):
    with client(emulator) as sb:
        send(sb, ServiceBusMessage("once"))
        with sb.get_subscription_receiver(
            TOPIC, SUBSCRIPTION, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
        ) as receiver:
            message = receive_one(receiver)
            assert str(message) == "once"
            assert receiver.receive_messages(max_wait_time=1) == []


def test_a_wrong_key_is_refused(emulator):
    wrong = emulator.connection_string.replace("SharedAccessKey=", "SharedAccessKey=x")
    with ServiceBusClient.from_connection_string(wrong, retry_total=0) as sb:
        with pytest.raises(Exception) as refused:
            send(sb, ServiceBusMessage("nope"))
        assert "401" in str(refused.value) or "nauthori" in str(refused.value) or "uthentication" in type(refused.value).__name__


def test_bad_arguments_exit_2_and_name_the_argument(emulator_binary):
    result = subprocess.run(
        [emulator_binary, "--subscription", "orphan"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "--subscription orphan: no --topic before it" in result.stderr
