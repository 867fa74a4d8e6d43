"""Webhook deliveries connect to the address the policy checked (no second lookup)."""

from __future__ import annotations

import ipaddress
import time

import pytest

from imagenodes.server import webhooks
from imagenodes.server.webhooks import WebhookPolicy, WebhookSender
from tests.test_server import _Receiver

EVENT = {"type": "job.completed", "job_id": "j1", "seq": 7, "data": {}}


def test_a_delivery_goes_to_the_checked_address_with_the_name_as_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``hooks.example`` is a name only our resolver knows (it stands for DNS): the
    delivery must connect to the address the check got and send the name as Host.
    Before, httpx resolved the name a second time (DNS rebinding could swap it)."""
    receiver = _Receiver()
    port = int(receiver.url.rsplit(":", 1)[1].split("/", 1)[0])
    lookups: list[str] = []

    def resolve(host: str, port_: int) -> list[ipaddress.IPv4Address]:
        lookups.append(host)
        if host != "hooks.example":
            raise OSError(host)
        return [ipaddress.IPv4Address("127.0.0.1")]

    monkeypatch.setattr(webhooks, "resolve", resolve)
    policy = WebhookPolicy(allow_hosts=("hooks.example",), allow_private=True)
    sender = WebhookSender(b"secret", policy, final_attempts=1)
    sender.start()
    try:
        sender.submit(f"http://hooks.example:{port}/hook", ("job.completed",), EVENT)
        deadline = time.monotonic() + 10
        while sender.delivered + sender.failed == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        sender.stop()
        receiver.close()
    assert (sender.delivered, sender.failed) == (1, 0)
    ((headers, _body),) = receiver.requests
    assert headers["Host"] == f"hooks.example:{port}"
    assert lookups == ["hooks.example"]  # one lookup per delivery: the policy's


def test_a_private_answer_is_refused_unless_private_addresses_are_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhooks, "resolve", lambda h, p: [ipaddress.IPv4Address("10.0.0.5")])
    with pytest.raises(Exception) as err:
        WebhookPolicy(allow_hosts=("hooks.example",)).check("https://hooks.example/x")
    assert getattr(err.value, "code", None) == "INVALID_INPUT"
    target = WebhookPolicy(allow_hosts=("hooks.example",), allow_private=True).check(
        "https://hooks.example/x"
    )
    assert (target.address, target.port, target.pinned_url()) == (
        "10.0.0.5",
        443,
        "https://10.0.0.5:443/x",
    )
