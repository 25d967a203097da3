"""The token-bucket rate limit and its ASGI middleware, on a clock the test moves."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from uit_reid.serve.limits import RateLimit, TokenBuckets


class Clock:
    """A clock that only moves when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal_then_refill() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(5)] == [0.0, 0.0, 0.0, 0.5, 0.5]  # a token every 1/2 s
    clock.now += 0.25
    assert buckets.take("a") == pytest.approx(0.25)  # half a token back: a quarter of a second to go
    clock.now += 0.25
    assert buckets.take("a") == 0.0  # one token has come back ...
    assert buckets.take("a") == pytest.approx(0.5)  # ... and is spent
    clock.now += 60.0  # a long pause refills the bucket to its burst, no further
    assert [buckets.take("a") for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]


def test_clients_have_their_own_buckets_and_the_oldest_are_dropped() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=1, max_clients=2, clock=clock)
    assert [buckets.take("a"), buckets.take("a"), buckets.take("b")] == [0.0, 1.0, 0.0]
    assert buckets.take("c") == 0.0  # three clients: "a", seen least recently, is forgotten
    assert buckets.take("a") == 0.0 and buckets.take("b") == 0.0  # "a" starts afresh; "b" was dropped for it
    assert buckets.take("a") == 1.0


@settings(max_examples=60, deadline=None)
@example(rate=0.5, burst=1, gaps=[0.1, 1.0, 5.0, 5.0, 5.0])  # float time sums once left a token 1e-13 short
@given(rate=st.sampled_from([0.5, 1.0, 3.0, 10.0]), burst=st.integers(1, 6),
       gaps=st.lists(st.sampled_from([0.0, 0.0, 0.01, 0.1, 0.25, 1.0, 5.0]), min_size=1, max_size=40))
def test_a_client_never_gets_more_than_burst_plus_rate_times_time(rate, burst, gaps) -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=rate, burst=burst, clock=clock)
    granted = []
    for gap in gaps:
        clock.now += gap
        wait = buckets.take("client")
        if wait == 0.0:
            granted.append(clock.now)
        else:  # refused: it says how long until a token is back, at most one token's time
            assert 0.0 < wait <= 1.0 / rate + 1e-9
    for i in range(len(granted)):
        for j in range(i, len(granted)):
            assert j - i + 1 <= burst + rate * (granted[j] - granted[i]) + 1e-9
    # and never fewer: requests spaced a token apart after a full bucket are all granted
    clock.now += burst / rate
    for _ in range(burst + 3):
        assert buckets.take("client") == 0.0
        clock.now += 1.0 / rate


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 5), (1.0, 0)])
def test_bad_settings_are_refused(rate, burst) -> None:
    with pytest.raises(ValueError, match=rf"^rate must be > 0 and burst >= 1, got rate={rate}, burst={burst}$"):
        TokenBuckets(rate, burst)


async def ok_app(scope, receive, send) -> None:
    """A real (tiny) ASGI app behind the middleware."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_middleware_refuses_with_429_and_retry_after_then_lets_through() -> None:
    clock = Clock()
    app = RateLimit(ok_app, rate=0.4, burst=2, clock=clock)

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            out = [await client.get("/search?q=a") for _ in range(3)]
            out.append(await client.get("/healthz"))  # exempt
            clock.now += 2.5  # one token back (0.4 per second)
            out += [await client.get("/stats"), await client.get("/stats")]
            return out

    r = asyncio.run(scenario())
    assert [x.status_code for x in r] == [200, 200, 429, 200, 200, 429]
    assert r[2].json() == {"error": "too many requests: at most 0.4 per second per client (burst 2)"}
    assert r[2].headers["retry-after"] == str(math.ceil(1 / 0.4)) == "3"  # whole seconds, rounded up
    assert r[2].headers["content-type"] == "application/json"
