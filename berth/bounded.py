"""Reading what a learner controls, with bounds. The learner is root in their machine: its
Docker engine and every server in it may answer with endless data, drip a byte a second,
or redirect Berth elsewhere. Whatever Berth reads from them is bounded in size and in
total time, so one learner's machine can neither fill Berth's memory nor hold a check (and
the thread it runs on) for longer than its deadline."""

from __future__ import annotations

import time

import docker
import requests
import requests.adapters

ENGINE_ANSWER_LIMIT = 16 * 1024 * 1024  # an inspect or a list of a learner's engine: far below this
ENGINE_ANSWER_TIME = 20.0  # seconds for one whole answer of a learner's engine
CHUNK = 64 * 1024


class TooMuch(requests.exceptions.RequestException):
    """An answer larger or slower than Berth reads."""


def read_bounded(response: requests.Response, limit: int, deadline: float) -> bytes:
    """The body of a streamed response, at most `limit` bytes (more is cut off and the
    connection closed), read until the monotonic `deadline`; TooMuch when it is not done by
    then."""
    body = bytearray()
    try:
        # read1: what has arrived (one read of the socket), not a whole chunk's worth, so that
        # a server dripping a byte at a time is measured against the deadline byte by byte
        while chunk := response.raw.read1(CHUNK, decode_content=True):
            body += chunk
            if len(body) >= limit:
                return bytes(body[:limit])
            if time.monotonic() > deadline:
                raise TooMuch("the answer kept coming past its deadline")
        return bytes(body)
    finally:
        response.close()


class BoundedAdapter(requests.adapters.BaseAdapter):
    """Wraps the adapter a Docker client uses: an answer read whole (not a stream Berth asked
    for: logs, an exec's socket) may be at most `limit` bytes and take `seconds` in all."""

    def __init__(self, inner: requests.adapters.BaseAdapter, limit: int, seconds: float):
        super().__init__()
        self.inner, self.limit, self.seconds = inner, limit, seconds

    def send(self, request, stream=False, **kwargs):  # type: ignore[override]
        deadline = time.monotonic() + self.seconds
        response = self.inner.send(request, stream=True, **kwargs)
        if stream:
            return response
        body = read_bounded(response, self.limit + 1, deadline)
        if len(body) > self.limit:
            raise TooMuch(f"the engine's answer is larger than {self.limit // (1024 * 1024)} MiB")
        response._content = body  # what requests itself sets once it has read a body
        response._content_consumed = True
        return response

    def close(self) -> None:
        self.inner.close()


def bound_engine_client(client: docker.DockerClient, limit: int = ENGINE_ANSWER_LIMIT,
                        seconds: float = ENGINE_ANSWER_TIME) -> docker.DockerClient:
    """A client of a learner's engine that follows no redirect (the engine could send Berth,
    with its client certificate, anywhere) and reads every answer with bounds."""
    api = client.api
    api.max_redirects = 0
    for prefix, adapter in list(api.adapters.items()):
        if not isinstance(adapter, BoundedAdapter):
            api.mount(prefix, BoundedAdapter(adapter, limit, seconds))
    return client
