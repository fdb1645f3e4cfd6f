"""kvi-agent from another language: Python's standard `urllib`, against `kvi-agent --demo`."""

import json
import urllib.error
import urllib.request

import pytest

SECRET = "demo-secret"


def get(demo, path, token=True, timeout=90):
    request = urllib.request.Request(demo.base + path)
    if token:
        request.add_header("X-KVI-Token", demo.token)
    return urllib.request.urlopen(request, timeout=timeout)


def test_read(demo):
    with get(demo, f"/v1/secrets/{SECRET}") as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Type"] == "application/json"
        body = json.load(response)
    assert sorted(body) == ["created_on", "expires_on", "name", "not_before", "value", "version"]
    assert body["name"] == SECRET
    assert body["value"].startswith("demo-value-")
    assert len(body["version"]) == 32


def test_a_request_without_the_token_is_401(demo):
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(demo, f"/v1/secrets/{SECRET}", token=False)
    assert refused.value.code == 401
    assert json.load(refused.value) == {
        "error": "unauthorized",
        "message": "missing X-KVI-Token header",
    }


def test_a_long_poll_sees_a_rotation(demo):
    with get(demo, f"/v1/secrets/{SECRET}") as response:
        first = json.load(response)
    path = f"/v1/secrets/{SECRET}?after_version={first['version']}&wait=30"
    with get(demo, path) as response:
        assert response.status == 200
        rotated = json.load(response)
    assert rotated["name"] == SECRET
    assert rotated["version"] != first["version"]
    assert rotated["value"] != first["value"]
    assert rotated["value"].startswith("demo-value-")


def test_server_sent_events_announce_rotations_without_values(demo):
    with get(demo, f"/v1/watch?name={SECRET}") as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        assert stream.readline() == b": watching\n"
        assert stream.readline() == b"\n"
        line = stream.readline()
        while line.startswith(b":") or line == b"\n":  # keep-alive comments
            line = stream.readline()
        assert line.startswith(b"data: ")
        event = json.loads(line[len(b"data: "):])
    assert sorted(event) == ["name", "version"]
    assert event["name"] == SECRET
    assert len(event["version"]) == 32
