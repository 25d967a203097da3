"""The search API through a real HTTP client against a real `uit-reid serve` process on loopback."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.serve.conftest import ROOT, free_port, serve_command, serve_env, start_server

QUERY = "a man in a red jacket and blue jeans"
TIMEOUT = 30


def get(server, path: str, **kw) -> httpx.Response:
    return httpx.get(server.url + path, timeout=TIMEOUT, **kw)


def expected_top(gallery, query: str, k: int) -> tuple[list[str], np.ndarray]:
    """Top-k by brute force in this process: the model's image and text features, cosine, sort."""
    from uit_reid import augment
    from uit_reid.factory import load_model
    from uit_reid.retrieval import list_images

    model = load_model(gallery["model"])
    size = model.image_size
    paths = list_images(gallery["images"])
    transform = augment.build_eval_transform(size, interpolation="bilinear")  # the training default, as indexed
    with torch.no_grad():
        images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        v = torch.nn.functional.normalize(model.encode_image(images, normalize=False).float(), dim=-1)
        t = torch.nn.functional.normalize(
            model.encode_text(model.encoder.tokenize([query]), normalize=False).float(), dim=-1
        )
    scores = (t @ v.t())[0].numpy()
    order = np.argsort(-scores, kind="stable")[:k]
    return [str(paths[i]) for i in order], scores[order]


def test_search_matches_brute_force(server, gallery) -> None:
    r = get(server, "/search", params={"q": QUERY, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 5 and body["results"][0]["query"] == QUERY
    hits = body["results"][0]["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    ids, scores = expected_top(gallery, QUERY, 5)
    np.testing.assert_allclose([h["score"] for h in hits], scores, atol=1e-4)
    # ties aside, the same images in the same order
    assert [h["id"] for h in hits][:1] == ids[:1]
    assert sorted(h["id"] for h in hits) == sorted(ids)


def test_k_above_the_gallery_size_is_capped(server, gallery) -> None:
    """As the CLI and `GalleryIndex.search` do: k between the index size (32) and max_k (50) gives the whole index."""
    for answer in (get(server, "/search", params={"q": QUERY, "k": 40}),
                   httpx.post(server.url + "/search", json={"queries": [QUERY], "k": 40}, timeout=30)):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["k"] == 40  # as asked
        hits = body["results"][0]["results"]
        ids, _ = expected_top(gallery, QUERY, 32)
        assert [h["rank"] for h in hits] == list(range(1, 33)) and sorted(h["id"] for h in hits) == sorted(ids)


def test_post_many_queries_equals_single_gets(server) -> None:
    queries = [QUERY, "a woman with a black backpack", "someone in white shoes"]
    r = httpx.post(server.url + "/search", json={"queries": queries, "k": 4}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    many = r.json()["results"]
    assert [m["query"] for m in many] == queries
    for q, m in zip(queries, many):
        single = get(server, "/search", params={"q": q, "k": 4}).json()["results"][0]["results"]
        assert [h["id"] for h in single] == [h["id"] for h in m["results"]]
        np.testing.assert_allclose([h["score"] for h in single], [h["score"] for h in m["results"]], atol=1e-5)


def test_concurrent_queries_are_answered_each_with_its_own_results(server) -> None:
    queries = [f"a person wearing a {c} shirt" for c in ("red", "blue", "green", "black", "white", "yellow")] * 4
    sequential = {q: get(server, "/search", params={"q": q, "k": 3}).json() for q in set(queries)}
    before = get(server, "/stats").json()["queries_served"]
    with ThreadPoolExecutor(max_workers=len(queries)) as pool:
        answers = list(pool.map(lambda q: get(server, "/search", params={"q": q, "k": 3}).json(), queries))
    for q, a in zip(queries, answers):
        assert a["results"][0]["query"] == q
        assert [h["id"] for h in a["results"][0]["results"]] == [h["id"] for h in sequential[q]["results"][0]["results"]]
    stats = get(server, "/stats").json()
    assert stats["queries_served"] == before + len(queries)
    assert stats["batches"] <= stats["search_requests"]


def test_images_thumbnails_and_stats(server, gallery) -> None:
    hit = get(server, "/search", params={"q": QUERY, "k": 1}).json()["results"][0]["results"][0]
    before = get(server, "/stats").json()["thumbnail_cache"]
    r = get(server, hit["image_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(r.content))
    original = Image.open(hit["id"]).convert("RGB")
    assert thumb.size[0] <= 128 and thumb.size[1] <= 256
    assert abs(thumb.size[0] / thumb.size[1] - original.size[0] / original.size[1]) < 0.1
    assert get(server, hit["image_url"]).content == r.content
    after = get(server, "/stats").json()["thumbnail_cache"]
    assert after["hits"] >= before["hits"] + 1
    full = get(server, hit["image_url"], params={"full": "true"})
    assert full.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(full.content))), np.asarray(original))

    stats = get(server, "/stats").json()
    assert stats["index_size"] == 32 and stats["model_fingerprint"].startswith("uit-tiny-")
    assert stats["queries_served"] >= 1
    lat = stats["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert get(server, "/healthz").json() == {"status": "ok", "index_size": 32}


def scrape(server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``GET /metrics`` parsed by prometheus_client's own parser: {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    r = get(server, "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_prometheus_metrics_count_requests_batches_and_memory(server) -> None:
    before = scrape(server)
    assert get(server, "/search", params={"q": QUERY, "k": 3}).status_code == 200
    body = {"queries": [QUERY, "a woman in a white dress"], "k": 2}
    assert httpx.post(server.url + "/search", json=body, timeout=TIMEOUT).status_code == 200
    assert get(server, "/search", params={"q": "", "k": 3}).status_code == 422
    assert get(server, "/no/such/route").status_code == 404
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    requests = "uit_reid_http_requests_total"
    assert delta(requests, route="/search", method="GET", status="200") == 1
    assert delta(requests, route="/search", method="POST", status="200") == 1
    assert delta(requests, route="/search", method="GET", status="422") == 1
    assert delta(requests, route="unmatched", method="GET", status="404") == 1  # a template, never the raw path
    assert delta(requests, route="/metrics", method="GET", status="200") == 1  # the first scrape
    assert delta("uit_reid_http_request_duration_seconds_count", route="/search") == 3
    assert delta("uit_reid_http_request_duration_seconds_bucket", route="/search", le="+Inf") == 3
    assert delta("uit_reid_http_request_duration_seconds_sum", route="/search") > 0
    assert delta("uit_reid_queries_total") == 3
    assert delta("uit_reid_batch_size_count") == 2 and delta("uit_reid_batch_size_sum") == 3
    assert after[("uit_reid_index_size", ())] == 32
    assert after[("process_resident_memory_bytes", ())] > 50 * 2**20


def test_stats_reads_the_measurements_of_metrics(server) -> None:
    """``/stats`` measures nothing itself (issue 30, item 7): its latency window holds exactly the answered
    searches ``/metrics`` counts (a refused one is timed by the histogram, not taken into the percentiles)
    and its memory is ``process_resident_memory_bytes`` in MiB."""
    assert get(server, "/search", params={"q": QUERY, "k": 2}).status_code == 200
    assert get(server, "/search", params={"q": "", "k": 2}).status_code == 422
    samples = scrape(server)
    stats = get(server, "/stats").json()

    def total(name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())

    answered = total("uit_reid_http_requests_total", route="/search", status="200")
    assert stats["latency_ms"]["window"] == answered >= 1
    assert total("uit_reid_http_request_duration_seconds_count", route="/search") > answered
    assert stats["search_requests"] == answered
    assert 0 < stats["latency_ms"]["p50"] <= stats["latency_ms"]["p99"]
    rss_mb = samples[("process_resident_memory_bytes", ())] / 2**20
    assert abs(stats["resident_memory_mb"] - rss_mb) < 0.1 * rss_mb  # two readings of one figure, moments apart


def test_metrics_labels_come_from_closed_sets_whatever_the_methods(server) -> None:
    """1,000 random methods (and 20 of 10,000 letters) add no series: they are all counted as ``other``."""
    import random
    import string

    from uit_reid.serve.metrics import METHODS, STATUSES

    requests = "uit_reid_http_requests_total"
    before = scrape(server)
    rng = random.Random(29)
    methods = ["".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12))) for _ in range(1000)]
    methods += ["".join(rng.choices(string.ascii_uppercase, k=10_000)) for _ in range(20)]
    with httpx.Client(timeout=TIMEOUT) as client:
        for n, method in enumerate(methods):
            path = ("/search?q=man", "/image/1", f"/no/such/{n}")[n % 3]
            assert client.request(method, server.url + path).status_code in (404, 405, 429)
    after = scrape(server)
    series = {labels for name, labels in after if name == requests}
    new = series - {labels for name, labels in before if name == requests}
    assert len(new) <= 6, new  # other x (3 routes) x (404/405/429), at most
    for labels in series:
        values = dict(labels)
        assert values["method"] in METHODS | {"other"}
        assert values["status"] in {str(s) for s in STATUSES} | {"1xx", "2xx", "3xx", "4xx", "5xx"}
        assert values["route"] in {"/search", "/image/{image_id}", "unmatched", "/metrics", "/healthz", "/stats",
                                   "/", "/static/page.css", "/static/page.js", "/openapi.json", "/docs"}
    others = sum(v - before.get((name, labels), 0.0) for (name, labels), v in after.items()
                 if name == requests and dict(labels)["method"] == "other")
    assert others == len(methods)


LONG = "a" * 600
BAD_REQUESTS = [
    ("GET", "/search?q=&k=3", None, 422, "q: the query is empty"),
    ("GET", "/search?q=%20%20&k=3", None, 422, "q: the query is empty"),
    ("GET", "/search?k=3", None, 422, "q: Field required"),
    ("GET", f"/search?q={LONG}", None, 422, "q: the query has 600 characters, at most 512 are allowed"),
    ("GET", "/search?q=%FF%FEman", None, 400, "q: the query is not valid UTF-8"),
    ("GET", "/search?q=man%00", None, 422, "q: the query contains control characters"),
    ("GET", "/search?q=man&k=0", None, 422, "k: must be between 1 and 50 (the service's max_k), got 0"),
    ("GET", "/search?q=man&k=51", None, 422, "k: must be between 1 and 50 (the service's max_k), got 51"),
    ("GET", "/search?q=man&k=1000000000", None, 422, "k: must be between 1 and 50 (the service's max_k), got 1000000000"),
    ("GET", "/search?q=man&k=ten", None, 422, "k: Input should be a valid integer"),
    ("GET", "/image/99999", None, 404, "unknown image id '99999'"),
    ("GET", "/image/-1", None, 404, "unknown image id '-1'"),
    ("GET", "/image/...", None, 404, "unknown image id '...'"),
    ("GET", "/image/..%2F..%2Fetc%2Fpasswd", None, 404, "Not Found"),
    ("GET", "/image/%2Fetc%2Fpasswd", None, 404, "Not Found"),
    ("GET", "/image/C:%5Cwindows", None, 404, "unknown image id 'C:\\\\windows'"),
    ("GET", "/image/1e3", None, 404, "unknown image id '1e3'"),
    ("POST", "/search", b'{"queries": ["' + b"x" * 100_000 + b'"]}', 413, "request body too large: at most 65536 bytes"),
    ("POST", "/search", b'{"queries": ', 422, "JSON decode error"),
    ("POST", "/search", b'{"queries": ["\xff\xfe"]}', 400, "error parsing the body"),
    ("POST", "/search", b'{"queries": []}', 422, "queries: give at least one query"),
    ("POST", "/search", b'{"queries": "man"}', 422, "body.queries: Input should be a valid list"),
    ("POST", "/search", b'{"queries": ["man", ""]}', 422, "queries[1]: the query is empty"),
    ("POST", "/search", ('{"queries": [' + ", ".join(['"a"'] * 33) + "]}").encode(), 422,
     "queries: at most 32 per request, got 33"),
    ("POST", "/search", b'{"queries": ["man"], "k": 0}', 422, "k: must be between 1 and 50 (the service's max_k)"),
    # JSON escapes can spell a lone UTF-16 surrogate, which is no text (it once got a plain-text 500)
    ("POST", "/search", b'{"queries": ["\\ud800"]}', 422, "q: the query contains a lone UTF-16 surrogate"),
    ("POST", "/search", b'{"queries": ["man", "a\\udfffb"]}', 422, "queries[1]: the query contains a lone UTF-16"),
    ("GET", "/search?q=%ED%A0%80", None, 400, "q: the query is not valid UTF-8"),
    ("GET", "/nowhere", None, 404, "Not Found"),
    ("DELETE", "/search", None, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), BAD_REQUESTS,
                         ids=[f"{m} {p[:40]}" for m, p, *_ in BAD_REQUESTS])
def test_bad_inputs_get_a_clear_4xx_and_the_server_keeps_serving(server, method, path, body, status, message) -> None:
    with httpx.Client(timeout=TIMEOUT) as client:
        request = client.build_request(method, server.url, content=body,
                                       headers={"content-type": "application/json"} if body else None)
        request.url = request.url.copy_with(raw_path=path.encode())  # sent as written, not normalised
        r = client.send(request)
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.json()
    assert "\n" not in r.json()["error"]
    assert r.headers["x-content-type-options"] == "nosniff" and "frame-ancestors 'none'" in r.headers[
        "content-security-policy"]  # on every refusal, also those of the middleware (413)
    assert server.alive()
    assert get(server, "/search", params={"q": QUERY, "k": 2}).status_code == 200


def test_rate_limit_per_client(gallery) -> None:
    srv = start_server(gallery, "limited", "--rate-limit", "0.5", "--burst", "3")
    try:
        codes = [get(srv, "/stats").status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        r = get(srv, "/search", params={"q": QUERY})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"] == "too many requests: at most 0.5 per second per client (burst 3)"
        assert get(srv, "/healthz").status_code == 200  # the health check is never limited
    finally:
        srv.stop()


def test_binds_loopback_by_default(server) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    listening = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            listening.append(local.split(":")[0])
    assert listening == ["0100007F"]  # 127.0.0.1, not 0.0.0.0


def test_refuses_an_index_of_another_model(gallery, tmp_path) -> None:
    """The process exits 1 with one line naming the index and the checkpoint, and never answers a request."""
    from uit_reid.retrieval import GalleryIndex

    other_path = tmp_path / "other.faiss"
    other = GalleryIndex(dim=128, fingerprint="uit-tiny-0123456789abcdef")
    other.add(np.random.default_rng(0).normal(size=(4, 128)).astype(np.float32), ["a.png", "b.png", "c.png", "d.png"])
    other.save(other_path)
    model_fp = GalleryIndex.load(gallery["index"]).fingerprint  # the checkpoint's encoder built the gallery's index
    port = free_port()
    out_log, err_log = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out_log.open("wb") as out, err_log.open("wb") as err:
        proc = subprocess.Popen(serve_command({**gallery, "index": other_path}, port), stdout=out, stderr=err,
                                env=serve_env(), cwd=ROOT)
        answered = []
        try:
            guard = time.monotonic() + 90  # against a hang only: a refusing server exits on its own
            while proc.poll() is None and time.monotonic() < guard:
                try:  # a server that started anyway would answer here, and the test fails at once
                    answered.append(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
        finally:
            running = proc.poll() is None
            if running:
                proc.kill()
            proc.wait(timeout=30)
    stderr = err_log.read_text()
    assert answered == [] and not running, f"serve started on an index of another model:\n{stderr}"
    assert proc.returncode == 1
    assert "Traceback" not in stderr and "Uvicorn running" not in stderr
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"uit-reid: error: refusing to serve {other_path}: it was not built with the model {gallery['model']} "
        f"(encoder fingerprint mismatch: index at {other_path} was built with 'uit-tiny-0123456789abcdef', "
        f"expected {model_fp!r})"
    ], stderr


def test_serve_help_does_not_import_the_web_stack() -> None:
    code = "import sys; from uit_reid.cli import main; main(['serve', '--help'])"
    proc = subprocess.run([sys.executable, "-c", code + "\n"], capture_output=True, text=True, timeout=60, env=serve_env())
    assert "--index" in proc.stdout


def test_serve_process_reports_a_start_that_fails(gallery, tmp_path) -> None:
    """`ServeProcess` raises with the end of the log when the command exits instead of serving."""
    from uit_reid.serve import ServeProcess

    missing = tmp_path / "missing.faiss"
    with pytest.raises(RuntimeError) as exc:
        ServeProcess(["--index", str(missing), "--model", str(gallery["model"]), "--device", "cpu"],
                     log=tmp_path / "serve.log", env=serve_env(), startup_timeout=90)
    message = str(exc.value)
    assert message.startswith("uit-reid serve exited with 1:\n"), message
    assert str(missing) in message and "uit-reid: error:" in message
    assert message.endswith((tmp_path / "serve.log").read_text()[-200:])


def test_serve_rerank_scores_exactly_from_the_embedding_files(gallery, tmp_path) -> None:
    """``serve --rerank K`` over an IVF-PQ index: hits and scores of an exact search over the stored vectors."""
    from uit_reid.cli import main
    from uit_reid.factory import load_model
    from uit_reid.retrieval import EmbeddingShards

    emb, index = tmp_path / "emb", tmp_path / "pq.faiss"
    checkpoint = str(gallery["model"])
    assert main(["encode", "--model", checkpoint, "--images", str(gallery["images"]), "--out", str(emb),
                 "--workers", "0", "--device", "cpu"]) == 0
    assert main(["index", "build", "--embeddings", str(emb), "--kind", "IVF2,PQ4x4", "--out", str(index)]) == 0
    srv = start_server({**gallery, "index": index}, "rerank", "--rerank", "1000")
    try:
        r = get(srv, "/search", params={"q": QUERY, "k": 4})
        assert r.status_code == 200, r.text
        hits = r.json()["results"][0]["results"]
    finally:
        srv.stop()
    model = load_model(checkpoint)
    with torch.no_grad():
        t = torch.nn.functional.normalize(model.encode_text(model.encoder.tokenize([QUERY]), normalize=False), dim=-1)
    shards = EmbeddingShards(emb)
    vectors = shards.rows_of(np.arange(len(shards)))
    exact = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ t[0].numpy()
    top = np.argsort(-exact, kind="stable")[:4]
    ids = [i for n in range(shards.num_shards) for i in shards.ids(n)]
    assert [h["id"] for h in hits] == [ids[i] for i in top]
    assert [h["image_url"] for h in hits] == [f"/image/{i}" for i in top]  # numbered in the files' row order
    np.testing.assert_allclose([h["score"] for h in hits], exact[top], atol=1e-5)
