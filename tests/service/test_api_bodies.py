"""Request bodies on a real uvicorn server, driven over raw sockets: a stalled body is dropped with 408
(and a stalled upload leaves no temporary file), an oversized one is refused with 413, all problem+json."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from worker_fixtures import start_api, wait_until

IDLE = 2.0  # HCD_BODY_IDLE_TIMEOUT_SECONDS of the server below
MAX_REQUEST = 16384  # HCD_MAX_REQUEST_BYTES (POST /jobs)
MAX_UPLOAD = 4096  # HCD_MAX_UPLOAD_BYTES (POST /models allows this plus the form's overhead)
UPLOAD_FORM_OVERHEAD = 64 * 1024  # api.app.UPLOAD_FORM_OVERHEAD
BOUNDARY = "b0undary"
_FILE_PART_HEAD = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
                   f"filename=\"t.safetensors\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()


@pytest.fixture(scope="module")
def body_api(service_env, tmp_path_factory):
    """Its own `hcd api` (one process) with a 2 s body idle timeout, small caps and its own data dir."""
    data_dir = tmp_path_factory.mktemp("bodies-data")
    env = {**service_env, "HCD_DATA_DIR": str(data_dir), "HCD_BODY_IDLE_TIMEOUT_SECONDS": str(IDLE),
           "HCD_MAX_REQUEST_BYTES": str(MAX_REQUEST), "HCD_MAX_UPLOAD_BYTES": str(MAX_UPLOAD)}
    server, url = start_api("hcd api (bodies)", env, tmp_path_factory.mktemp("bodies-logs"), workers=1)
    yield int(urlsplit(url).port or 0), data_dir / "uploads"
    server.stop()


def _head(method: str, path: str, key: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {key}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, closed: bool, at: float):
        self.status, self.headers, self.body, self.closed = status, headers, body, closed
        self.at = at  # time.monotonic() when the response began

    def problem(self, status: int, code: str) -> dict:
        assert self.status == status, (self.status, self.body)
        assert self.headers["content-type"].startswith("application/problem+json"), self.headers
        body = json.loads(self.body)
        assert body["status"] == status and body["code"] == code, body
        return body


def _read_answer(sock: socket.socket, timeout: float, check_closed: bool = False) -> Answer:
    """One HTTP/1.1 response (Content-Length framed); with `check_closed`, whether the server then closed
    the connection at once (uvicorn drops any idle connection after 5 s, hence the shorter wait)."""
    sock.settimeout(timeout)
    raw = b""
    while b"\r\n\r\n" not in raw:
        data = sock.recv(65536)
        assert data, f"connection closed before a response: {raw!r}"
        if not raw:
            at = time.monotonic()
        raw += data
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    while len(body) < length:
        data = sock.recv(65536)
        assert data, "connection closed inside the response body"
        body += data
    closed = False
    if check_closed:
        sock.settimeout(1.0)
        try:
            closed = sock.recv(1) == b""
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            closed = False
    return Answer(int(status_line.split()[1]), headers, body[:length], closed, at)


def _stalled_request(port: int, request: bytes, check_closed: bool = False) -> tuple[Answer, float]:
    """Send `request` (a partial body), stall; the answer and the seconds it took after the last byte."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        sent = time.monotonic()
        answer = _read_answer(sock, IDLE + 10, check_closed)
        return answer, answer.at - sent


def _part_files(uploads: Path) -> list[Path]:
    return list(uploads.glob(".upload-*.part"))


def test_stalled_job_body_is_408_and_the_connection_closed(body_api, api_key):
    port, _ = body_api
    request = _head("POST", "/jobs", api_key, {"Content-Type": "application/json", "Content-Length": "10000"})
    answer, elapsed = _stalled_request(port, request + b'{"spec": {"method": {"name": "ce"}, "x": "' + b"x" * 10,
                                       check_closed=True)
    body = answer.problem(408, "request_timeout")
    assert body["instance"] == "/jobs"
    assert IDLE - 0.25 <= elapsed <= IDLE + 2, elapsed  # the idle timer dropped it, not something else
    assert answer.headers.get("connection") == "close"
    assert answer.closed, "the server kept the connection of a stalled request open"


def test_stalled_upload_is_408_and_leaves_no_temporary_file(body_api, api_key):
    port, uploads = body_api
    assert not _part_files(uploads)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Length": "10000"}
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head("POST", "/models", api_key, headers) + _FILE_PART_HEAD + b"\0" * 50)
        sent = time.monotonic()
        # The file part has begun: its bytes are being written to a temporary file ...
        wait_until(lambda: _part_files(uploads), IDLE - 0.5, 0.05, "the upload's temporary file")
        answer = _read_answer(sock, IDLE + 10, check_closed=True)
    elapsed = answer.at - sent
    answer.problem(408, "request_timeout")
    assert IDLE - 0.25 <= elapsed <= IDLE + 2, elapsed
    assert answer.closed
    # ... and it is gone once the stalled request is dropped.
    assert not _part_files(uploads)


def test_upload_abandoned_by_the_client_leaves_no_temporary_file(body_api, api_key):
    port, uploads = body_api
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Length": "10000"}
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head("POST", "/models", api_key, headers) + _FILE_PART_HEAD + b"\0" * 50)
        wait_until(lambda: _part_files(uploads), IDLE - 0.5, 0.05, "the upload's temporary file")
    # The client hung up mid-body: the server notices the disconnect and removes the partial file.
    wait_until(lambda: not _part_files(uploads), IDLE + 2, 0.05, "the temporary file to be removed")


def test_chunked_job_body_over_the_cap_is_413(body_api, api_key):
    port, _ = body_api
    request = _head("POST", "/jobs", api_key, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request + _chunk(b'{"metadata": {"k": "'))
        for _ in range(MAX_REQUEST // 1024 + 2):
            sock.sendall(_chunk(b"x" * 1024))  # never finished: the cap, not the end, stops it
        answer = _read_answer(sock, IDLE + 10)
    body = answer.problem(413, "payload_too_large")
    assert str(MAX_REQUEST) in body["detail"]


def test_chunked_job_body_under_the_cap_is_read(body_api, api_key):
    """The same framing under the cap reaches the JSON parser (so the 413 above is about size)."""
    port, _ = body_api
    request = _head("POST", "/jobs", api_key, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request + _chunk(b'{"metadata": ') + _chunk(b"x" * 1024) + b"0\r\n\r\n")
        answer = _read_answer(sock, IDLE + 10)
    answer.problem(400, "invalid_json")


def test_chunked_upload_over_the_cap_is_413_and_leaves_no_temporary_file(body_api, api_key):
    port, uploads = body_api
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Transfer-Encoding": "chunked"}
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head("POST", "/models", api_key, headers) + _chunk(_FILE_PART_HEAD))
        for _ in range(MAX_UPLOAD // 1024 + 2):
            sock.sendall(_chunk(b"\0" * 1024))
        answer = _read_answer(sock, IDLE + 10)
    answer.problem(413, "payload_too_large")
    assert not _part_files(uploads)


@pytest.mark.parametrize("path,cap,content_type", [
    ("/jobs", MAX_REQUEST, "application/json"),
    ("/models", MAX_UPLOAD + UPLOAD_FORM_OVERHEAD, f"multipart/form-data; boundary={BOUNDARY}"),
])
def test_declared_length_over_the_cap_is_413_before_the_body(body_api, api_key, path, cap, content_type):
    port, _ = body_api
    request = _head("POST", path, api_key, {"Content-Type": content_type, "Content-Length": str(cap + 1)})
    answer, elapsed = _stalled_request(port, request)  # not one byte of the body is sent
    body = answer.problem(413, "payload_too_large")
    assert str(cap) in body["detail"]
    assert elapsed < IDLE - 0.5, elapsed  # answered at once, not after waiting for the body
