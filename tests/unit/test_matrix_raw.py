"""MatrixClient.raw: the one raw client-server call (429s waited out, errors typed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from peerbot.matrix import Forbidden, MatrixClient, NotFound, Transient


class _Response:
    def __init__(self, status: int, body: str) -> None:
        self.status = status
        self._body = body
        self.released = False

    async def json(self, content_type: str | None = None) -> Any:
        return json.loads(self._body)

    def release(self) -> None:
        self.released = True


class _FakeNio:
    """Just what raw() uses of an nio client: the token and ``send``."""

    homeserver = "http://127.0.0.1:1"
    user_id = "@bot:example.org"
    device_id = "BOTDEVICE"

    def __init__(self, answers: list[tuple[int, str]], token: str = "secret-token") -> None:
        self.access_token = token
        self.answers = answers
        self.calls: list[tuple[str, str, str | None, dict[str, str]]] = []
        self.responses: list[_Response] = []

    async def send(
        self, method: str, path: str, data: str | None, headers: dict[str, str]
    ) -> _Response:
        self.calls.append((method, path, data, headers))
        status, body = self.answers[min(len(self.calls), len(self.answers)) - 1]
        response = _Response(status, body)
        self.responses.append(response)
        return response


async def test_raw_waits_out_a_rate_limit_then_answers() -> None:
    fake = _FakeNio([(429, '{"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 5}'), (200, "{}")])
    status, answer = await MatrixClient.wrap(fake).raw("POST", "/x", {"a": 1})
    assert (status, answer) == (200, {})
    assert len(fake.calls) == 2
    method, path, data, headers = fake.calls[1]
    assert (method, path, json.loads(data or "null")) == ("POST", "/x", {"a": 1})
    assert headers["Authorization"] == "Bearer secret-token"
    assert all(r.released for r in fake.responses)


async def test_raw_gives_up_after_bounded_retries() -> None:
    fake = _FakeNio([(429, '{"retry_after_ms": 1}')])
    with pytest.raises(Transient) as caught:
        await MatrixClient.wrap(fake).raw("GET", "/y", None)
    assert caught.value.status == 429 and caught.value.errcode == "M_LIMIT_EXCEEDED"
    assert 2 < len(fake.calls) < 10


async def test_raw_reports_a_non_json_answer_as_none_and_raw_errors_are_typed() -> None:
    fake = _FakeNio([(502, "<html>bad gateway</html>")])
    assert await MatrixClient.wrap(fake).raw("GET", "/z", None) == (502, None)
    missing = _FakeNio([(404, '{"errcode": "M_NOT_FOUND", "error": "no such room"}')])
    with pytest.raises(NotFound, match="no such room"):
        await MatrixClient.wrap(missing)._raw("GET", "/r", None, "state of !r")


async def test_raw_refuses_before_login() -> None:
    fake = _FakeNio([(200, "{}")], token="")
    with pytest.raises(Forbidden, match="not logged in"):
        await MatrixClient.wrap(fake).raw("GET", "/w", None)
    assert fake.calls == []
