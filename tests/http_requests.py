"""HTTP/1.1 request reading for the local fakes (fake Bedrock, the container credentials
endpoint, the Twilio REST API): each request taken whole off the connection's buffer, so
keep-alive connections and requests split across segments both work."""
from __future__ import annotations

import trio


def parse_request(buffer: bytearray) -> tuple[str, str, dict[str, str], bytes] | None:
    """Take one complete request off the front of ``buffer``, if there is one."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    method, path, _ = head[0].split(" ", 2)
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if len(buffer) < end + 4 + length:
        return None
    body = bytes(buffer[end + 4:end + 4 + length])
    del buffer[:end + 4 + length]
    return method, path, headers, body


async def receive_request(stream: trio.abc.ReceiveStream, buffer: bytearray
                          ) -> tuple[str, str, dict[str, str], bytes] | None:
    """The next whole request on ``stream`` (bytes read past it stay in ``buffer``), or
    None once the peer closed."""
    while (request := parse_request(buffer)) is None:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buffer += data
    return request
