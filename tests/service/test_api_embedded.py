"""The embedded servers start, answer and stop (used by `hcd up` and by tests without servers)."""

from __future__ import annotations

import redis

from jobs.embedded import start_redis


def test_embedded_redis_starts_and_stops(tmp_path):
    server = start_redis(tmp_path / "redis")
    client = redis.Redis.from_url(server.url)
    try:
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
    finally:
        client.close()
        server.stop()
    server.stop()  # idempotent
    try:
        redis.Redis.from_url(server.url, socket_connect_timeout=0.5).ping()
        raise AssertionError("redis still answers after stop()")
    except redis.ConnectionError:
        pass
