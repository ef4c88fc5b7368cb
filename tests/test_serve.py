"""`vstore serve`: a real uvicorn server on 127.0.0.1 (free port, in a thread) against tiny real
stores (tiny CLIP, so text and image queries work); every route, every error, traversal
attempts, the token, concurrent clients against the CLI's answers, a build committing while
clients query."""
from __future__ import annotations

import io
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from serve_helpers import build_clip_store, concurrent_rounds, hit_keys, raw_get, same_hits, wait_for

from cli.main import main
from cli.serve.app import BackgroundServer
from cli.serve.config import ServeConfig
from vstore import Store


@pytest.fixture(scope="module")
def clip_store(class_videos, tiny_clip_path, tmp_path_factory):
    videos, labels = class_videos
    return build_clip_store(videos, labels, tiny_clip_path, tmp_path_factory.mktemp("serve") / "store")


@pytest.fixture(scope="module")
def server(clip_store):
    with BackgroundServer(clip_store, ServeConfig(port=0, device="cpu", poll_s=0.1)) as srv:
        yield srv


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def cli_hits(runner, store, *args) -> list[dict]:
    r = runner.invoke(main, ["search", str(store), "--json", "--device", "cpu", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)["hits"]


def assert_error(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and "Traceback" not in body["error"], body
    for w in words:
        assert w in body["error"], body


def test_server_binds_localhost_and_serves_page_health_docs(server, client):
    assert server.url.startswith("http://127.0.0.1:")
    assert client.get("/healthz").json() == {"ok": True, "generation": 1}
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for src in ("/static/app.js", "/static/style.css"):
        assert src in page.text and client.get(src).status_code == 200
    assert "http" not in client.get("/static/app.js").text.replace("HTTP ", "")  # no CDN, nothing off-host
    assert client.get("/openapi.json").json()["paths"]["/api/search"]
    assert client.get("/docs").status_code == 200


def test_info_is_vstore_info_plus_index_state(server, client, clip_store, runner):
    info = client.get("/api/info").json()
    r = runner.invoke(main, ["info", str(clip_store), "--json"])
    cli = json.loads(r.output)
    # every key `vstore info --json` gives, with the same value; only the store's path is left out
    assert {k: info.get(k) for k in cli if k != "path"} == {k: v for k, v in cli.items() if k != "path"}
    assert set(info) - set(cli) == {"name", "index", "served_generation", "text_queries", "server"}
    assert info["name"] == clip_store.name
    assert info["served_generation"] == 1 and info["index"]["state"] == "fresh"
    assert info["index"]["generation"] == 1 and info["text_queries"] is True
    assert "path" not in info  # the server does not tell clients where the store lives


@pytest.mark.parametrize("body,args", [
    ({"text": "a plate of pasta", "k": 5}, ["--text", "a plate of pasta", "-k", "5"]),
    ({"text": "a red circle", "k": 4, "per_video": True, "labels": ["red_circle", "blue_stripes"]},
     ["--text", "a red circle", "-k", "4", "--per-video", "--label", "red_circle", "--label", "blue_stripes"]),
    ({"video": "green_square-01", "k": 6}, ["--video", "green_square-01", "-k", "6"]),
    ({"video": "green_square-01", "level": "video", "k": 3, "exclude": ["green_square-01"]},
     ["--video", "green_square-01", "--level", "video", "-k", "3", "--exclude-video", "green_square-01"]),
])
def test_search_equals_the_cli(client, clip_store, runner, body, args):
    r = client.post("/api/search", json=body)
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["took_ms"] > 0 and res["generation"] == 1
    cli = cli_hits(runner, clip_store, *args)
    assert same_hits(res["hits"], cli) and len(cli) == body["k"]
    h = res["hits"][0]
    assert set(h) == {"rank", "video_id", "frame_index", "timestamp", "score", "label", "thumbnail_url", "video_url"}
    assert h["video_url"] == f"/api/videos/{h['video_id']}/file"


def test_frame_vector_and_image_queries(client, clip_store, runner, tmp_path):
    with Store.open(clip_store) as s:
        vid = s.videos.ids[3]
        fi, _ = s.get_frames(vid)
        vec = s.get_embeddings(vid, dtype=np.float32)[1]
    r = client.post("/api/search", json={"video": vid, "frame": int(fi[1]), "k": 3}).json()
    assert r["hits"][0]["video_id"] == vid and r["hits"][0]["frame_index"] == fi[1]
    v = client.post("/api/search", json={"vector": vec.tolist(), "k": 3}).json()
    assert hit_keys(v["hits"]) == hit_keys(r["hits"])
    # an image query: a thumbnail the server made, uploaded back as multipart
    jpeg = client.get(r["hits"][0]["thumbnail_url"]).content
    (tmp_path / "q.jpg").write_bytes(jpeg)
    up = client.post("/api/search", files={"image": ("q.jpg", jpeg, "image/jpeg")}, data={"k": "4", "per_video": "true"})
    assert up.status_code == 200, up.text
    assert same_hits(up.json()["hits"], cli_hits(runner, clip_store, "--image", str(tmp_path / "q.jpg"), "-k", "4",
                                                 "--per-video"))


def test_split_nprobe_and_ef_in_served_searches_equal_the_cli(tmp_path, runner):
    """`vstore split` + an IVF index: vector queries with split and nprobe answer as `vstore search
    --vector --split --nprobe` (nprobe reaches FAISS: 1 of 8 lists answers differently from all
    8; a split this small is searched exactly, as by the CLI); then `vstore index --kind hnsw
    --rebuild` under the running server, and ef likewise."""
    from test_index import vector_store

    from vstore.split import split_ids
    store = vector_store(tmp_path / "s", n_videos=24, frames=5)
    for args in (["split", str(store), "--test-size", "0.25"], ["index", str(store), "--kind", "ivf", "--nlist", "8"]):
        r = runner.invoke(main, args)
        assert r.exit_code == 0, r.output
    splits = {name: set(split_ids(store, name)) for name in ("train", "test")}
    assert len(splits["test"]) == 6 and len(splits["train"]) == 18
    with Store.open(store) as s:
        vecs = np.random.default_rng(3).normal(size=(6, s.dim)).astype(np.float32)
    files = []
    for i, v in enumerate(vecs):
        np.save(tmp_path / f"q{i}.npy", v)
        files.append(str(tmp_path / f"q{i}.npy"))

    def check(c: httpx.Client, body: dict, args: list[str]) -> list[list[dict]]:
        out = []
        for v, f in zip(vecs, files):
            r = c.post("/api/search", json={"vector": v.tolist(), **body})
            assert r.status_code == 200, r.text
            hits = r.json()["hits"]
            assert hits and same_hits(hits, cli_hits(runner, store, "--vector", f, *args)), (body, hit_keys(hits))
            if "split" in body:
                assert {h["video_id"] for h in hits} <= splits[body["split"]]
            out.append(hits)
        return out

    with BackgroundServer(store, ServeConfig(port=0, poll_s=0.05)) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/api/info").json()["index"]["kind"] == "ivf"
        one = check(c, {"k": 8, "nprobe": 1}, ["-k", "8", "--nprobe", "1"])
        every = check(c, {"k": 8, "nprobe": 8}, ["-k", "8", "--nprobe", "8"])
        assert any(hit_keys(a) != hit_keys(b) for a, b in zip(one, every))  # nprobe reached the index
        check(c, {"k": 8, "split": "train", "nprobe": 1}, ["-k", "8", "--split", "train", "--nprobe", "1"])
        check(c, {"k": 4, "split": "test", "per_video": True, "nprobe": 2},
              ["-k", "4", "--split", "test", "--per-video", "--nprobe", "2"])
        r = runner.invoke(main, ["index", str(store), "--kind", "hnsw", "--rebuild"])
        assert r.exit_code == 0, r.output
        wait_for(lambda: c.get("/api/info").json()["index"]["kind"] == "hnsw", 60, "the server to load the HNSW index")
        check(c, {"k": 5, "ef": 4}, ["-k", "5", "--ef", "4"])
        check(c, {"k": 5, "split": "test", "ef": 4}, ["-k", "5", "--split", "test", "--ef", "4"])
        check(c, {"k": 10, "ef": 64, "level": "video"}, ["-k", "10", "--ef", "64", "--level", "video"])


def test_video_route_thumbnails_and_range_requests(client, clip_store):
    from PIL import Image
    with Store.open(clip_store) as s:
        vid = s.videos.ids[0]
        fi, ts = s.get_frames(vid)
        source = s.videos.sources[0]
    v = client.get(f"/api/videos/{vid}").json()
    assert v["video_id"] == vid and [f["index"] for f in v["frames"]] == fi.tolist()
    assert [f["timestamp"] for f in v["frames"]] == pytest.approx(ts.tolist())
    assert v["source_available"] and v["source"] == source.rsplit("/", 1)[1] and "/" not in v["source"]
    t = client.get(v["frames"][1]["thumbnail_url"])
    assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
    assert t.headers["x-vstore-frame-source"] == "video"
    assert Image.open(io.BytesIO(t.content)).size[0] > 32  # decoded from the video, not the 32 px key frame
    assert client.get(v["frames"][1]["thumbnail_url"]).content == t.content  # cached
    whole = client.get(v["video_url"])
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    with open(source, "rb") as f:
        data = f.read()
    assert whole.content == data and whole.headers.get("accept-ranges") == "bytes"
    part = client.get(v["video_url"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert_error(client.get(f"/api/videos/{vid}/frames/{int(fi[0]) + 1}.jpg"), 404, "no sampled frame")
    assert_error(client.get(f"/api/videos/{vid}/frames/abc.jpg"), 422)
    assert_error(client.get("/api/videos/nope"), 404, "nope")
    assert_error(client.get("/api/videos/nope/file"), 404)
    assert_error(client.get("/api/videos/nope/frames/0.jpg"), 404)


def test_key_frame_when_the_source_video_is_gone(class_videos, tiny_clip_path, tmp_path):
    videos, labels = class_videos
    store = build_clip_store(videos, labels, tiny_clip_path, tmp_path / "store", frames=2)
    with Store.open(store) as s:
        vid, source = s.videos.ids[0], s.videos.sources[0]
        frame = int(s.get_frames(vid)[0][0])
    shutil.move(source, tmp_path / "moved.mp4")
    with BackgroundServer(store, ServeConfig(port=0, device="cpu")) as srv, httpx.Client(base_url=srv.url) as c:
        t = c.get(f"/api/videos/{vid}/frames/{frame}.jpg")
        assert t.status_code == 200 and t.headers["x-vstore-frame-source"] == "key frame"
        assert c.get(f"/api/videos/{vid}").json()["source_available"] is False
        assert_error(c.get(f"/api/videos/{vid}/file"), 404, "no longer where the store recorded it")


def test_map_route_is_the_cli_map_with_thumbnails_computed_once(server, client, clip_store):
    from classifiers.embedding_map import MapConfig, compute_map
    r = client.get("/api/map")
    assert r.status_code == 200, r.text
    m = r.json()
    with Store.open(clip_store) as s:
        want = compute_map(s, MapConfig())
        mid = {v: int(s.get_frames(v)[0][len(s.get_frames(v)[0]) // 2]) for v in s.videos.ids}
        assert m["label_names"] == s.label_names
    assert m["generation"] == 1 and m["method"] == want.method and m["title"] == want.title
    assert [p["video_id"] for p in m["points"]] == want.ids and m["videos"] == 16
    np.testing.assert_allclose([[p["x"], p["y"]] for p in m["points"]], want.xy, atol=1e-5)  # the same map
    assert [p["label"] for p in m["points"]] == want.labels and {p["split"] for p in m["points"]} == {None}
    for p in m["points"]:
        assert p["thumbnail_url"] == f"/api/videos/{p['video_id']}/frames/{mid[p['video_id']]}.jpg"
    for p in m["points"][:2]:
        img = client.get(p["thumbnail_url"])
        assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg" and img.content[:2] == b"\xff\xd8"
    cached = server.app.state.backend.current.cache["map"]
    assert client.get("/api/map").json() == m and server.app.state.backend.current.cache["map"] is cached
    assert "map" in client.get("/openapi.json").json()["paths"]["/api/map"]["get"]["summary"]


def test_every_bad_request_is_a_4xx_with_a_message(client):
    post = lambda body, **kw: client.post("/api/search", content=body, headers={"content-type": "application/json"},
                                          **kw)
    assert_error(post(b"{nope"), 400, "not valid JSON")
    assert_error(post(b"[1, 2]"), 400, "JSON object")
    assert_error(post(b"\xff\xfe"), 400, "not valid JSON")
    assert_error(client.post("/api/search", json={}), 400, "exactly one query")
    assert_error(client.post("/api/search", json={"text": "a", "video": "b"}), 400, "exactly one query")
    assert_error(client.post("/api/search", json={"text": "a", "k": 0}), 400, "k must be in 1..1000")
    assert_error(client.post("/api/search", json={"text": "a", "k": 1001}), 400, "k must be in 1..1000")
    assert_error(client.post("/api/search", json={"text": "a", "k": "ten"}), 400, "k must be an integer")
    assert_error(client.post("/api/search", json={"text": "   "}), 400, "non-empty")
    assert_error(client.post("/api/search", json={"text": "a" * 10_001}), 400, "longer than 10,000 characters")
    assert client.post("/api/search", json={"text": "a" * 10_000, "k": 1}).status_code == 200  # the limit itself
    assert_error(client.post("/api/search", json={"text": "a", "colour": 1}), 400, "unknown field(s) colour")
    assert_error(client.post("/api/search", json={"text": "a", "level": "scene"}), 400, "level must be")
    assert_error(client.post("/api/search", json={"text": "a", "labels": ["nolabel"]}), 400, "unknown label(s) nolabel")
    assert_error(client.post("/api/search", json={"text": "a", "split": "test"}), 400, "split")
    assert_error(client.post("/api/search", json={"text": "a", "split": "later"}), 400, "split must be")
    assert_error(client.post("/api/search", json={"video": "no-such-video"}), 404, "no-such-video")
    assert_error(client.post("/api/search", json={"video": "green_square-01", "frame": 9999}), 400, "no sampled frame")
    assert_error(client.post("/api/search", json={"text": "a", "frame": 2}), 400, "frame needs video")
    assert_error(client.post("/api/search", json={"vector": [1.0, 2.0]}), 400, "expected a (64,)")
    assert_error(client.post("/api/search", json={"vector": [0.0] * 64}), 400, "all zeros")
    assert_error(client.post("/api/search", json={"vector": ["a"] * 64}), 400, "list of numbers")
    assert_error(client.post("/api/search", json={"text": "a", "exclude": "x"}), 404, "'x'")
    assert_error(client.post("/api/search", files={"image": ("x.png", b"not an image", "image/png")}), 400,
                 "not an image")
    assert_error(client.post("/api/search", files={"picture": ("x.png", b"\x89PNG", "image/png")}), 400,
                 "file field `image`")
    assert_error(client.post("/api/search", files={"image": ("x.png", b"", "image/png")}), 400, "empty")
    assert_error(client.post("/api/search", content=b"text=a", headers={"content-type": "text/plain"}), 415)
    assert_error(post(json.dumps({"vector": [0.5] * 300_000}).encode()), 413, "larger than")

    def chunked(pieces: int):  # a JSON body sent chunked: no Content-Length to refuse it by
        yield b'{"text": "a plate of pasta"'
        for _ in range(pieces):
            yield b" " * 65_536
        yield b"}"
    r = client.post("/api/search", content=chunked(20), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert_error(r, 413, "larger than 1,048,576 bytes")
    assert client.post("/api/search", content=chunked(2), headers={"content-type": "application/json"}).status_code == 200
    big = client.post("/api/search", files={"image": ("x.png", b"\0" * (17 << 20), "image/png")})
    assert_error(big, 413, "larger than")
    assert_error(client.get("/api/search"), 405)
    assert_error(client.get("/api/nothing"), 404, "no such route")


def test_path_traversal_attempts_never_reach_the_filesystem(server):
    for path in ["/api/videos/..%2F..%2F..%2Fetc%2Fpasswd/file", "/api/videos/%2Fetc%2Fpasswd/file",
                 "/api/videos/../../../../etc/passwd", "/api/videos/%2e%2e%2f%2e%2e%2fetc%2fpasswd/file",
                 "/api/videos/..%5c..%5cetc%5cpasswd/file", "/static/..%2F..%2Fapp.py", "/static/../app.py",
                 "/static/%2Fetc%2Fpasswd", "/static/index.html/../../config.py", "//etc/passwd",
                 "/api/videos/green_square-01/frames/..%2F..%2F1.jpg", "/api/videos/%00/file"]:
        status, body = raw_get(server.url, path)
        assert status in (400, 404), (path, status, body)
        assert "root:" not in json.dumps(body) and "ServeConfig" not in json.dumps(body), path


def test_token_required_and_refused(clip_store):
    token = "s3cret-token-123"
    cfg = ServeConfig(port=0, device="cpu", token=token)
    with Store.open(clip_store) as s:
        frame = int(s.get_frames("green_square-01")[0][0])
    with BackgroundServer(clip_store, cfg) as srv, httpx.Client(base_url=srv.url) as c:
        for route in ("/healthz", "/api/info", "/", "/docs", "/openapi.json", "/api/videos/green_square-01",
                      "/static/app.js", f"/api/videos/green_square-01/frames/{frame}.jpg",
                      "/api/videos/green_square-01/file"):
            assert_error(c.get(route), 401, "Authorization: Bearer")
            assert_error(c.get(route, headers={"Authorization": "Bearer wrong-token-123"}), 401)
            assert c.get(route, headers={"Authorization": f"Bearer {token}"}).status_code == 200, route
        assert_error(c.post("/api/search", json={"text": "a"}), 401)
        assert_error(c.get("/api/map"), 401, "Authorization: Bearer")
        ok = c.post("/api/search", json={"text": "a"}, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert_error(c.get("/?token=wrong-token-123"), 401)
        r = c.get(f"/?token={token}", follow_redirects=False)  # the page: a cookie for its own requests
        assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
        assert c.get("/api/info").status_code == 200  # the client kept the cookie
    with pytest.raises(ValueError, match="at least 8"):
        ServeConfig(token="short")


def test_text_query_on_a_thumbnail_store_is_a_400(store_copy):
    from vstore.index_build import build_index
    build_index(store_copy)
    with BackgroundServer(store_copy, ServeConfig(port=0, device="cpu")) as srv, httpx.Client(base_url=srv.url) as c:
        assert_error(c.post("/api/search", json={"text": "a cat"}), 400, "no text encoder")
        assert c.get("/api/info").json()["text_queries"] is False
        assert c.post("/api/search", json={"video": "red_circle-00", "k": 2}).status_code == 200


def test_upload_pixel_limit(clip_store):
    """max_image_pixels refuses a larger image before embedding it (400 naming the limit); an
    image of exactly that many pixels is searched."""
    from PIL import Image

    def png(w: int, h: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG")
        return buf.getvalue()
    with BackgroundServer(clip_store, ServeConfig(port=0, device="cpu", max_image_pixels=1_000)) as srv, \
            httpx.Client(base_url=srv.url) as c:
        big = c.post("/api/search", files={"image": ("big.png", png(40, 26), "image/png")})
        assert_error(big, 400, "40x26", "at most 1,000 pixels")
        ok = c.post("/api/search", files={"image": ("ok.png", png(40, 25), "image/png")}, data={"k": "3"})
        assert ok.status_code == 200 and len(ok.json()["hits"]) == 3, ok.text


def test_encoder_that_cannot_be_loaded_is_a_503_for_text_and_images_only(class_videos, tiny_clip_path, tmp_path):
    """A store whose recorded CLIP checkpoint was moved away: the server starts, text and image
    queries are 503 saying why, vector and stored-video queries still answer."""
    videos, labels = class_videos
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(videos.glob("*.mp4"))[:4]:
        shutil.copy(p, few / p.name)
    checkpoint = tmp_path / "clip.pt"
    shutil.copy(tiny_clip_path, checkpoint)
    store = build_clip_store(few, labels, checkpoint, tmp_path / "store", frames=2)
    checkpoint.rename(tmp_path / "moved.pt")
    with Store.open(store) as s:
        vid, vec = s.videos.ids[0], s.get_embeddings(s.videos.ids[0], dtype=np.float32)[0]
        frame = int(s.get_frames(vid)[0][0])
    with BackgroundServer(store, ServeConfig(port=0, device="cpu")) as srv, httpx.Client(base_url=srv.url) as c:
        assert_error(c.post("/api/search", json={"text": "a red circle"}), 503, "cannot be loaded", "clip.pt")
        jpeg = c.get(f"/api/videos/{vid}/frames/{frame}.jpg").content
        assert_error(c.post("/api/search", files={"image": ("q.jpg", jpeg, "image/jpeg")}), 503, "cannot be loaded")
        r = c.post("/api/search", json={"vector": vec.tolist(), "k": 2})
        assert r.status_code == 200 and r.json()["hits"][0]["video_id"] == vid, r.text
        assert c.post("/api/search", json={"video": vid, "k": 2}).status_code == 200


def test_8_concurrent_clients_x_100_queries_equal_the_cli(server, clip_store, runner, tmp_path):
    with Store.open(clip_store) as s:
        ids = s.videos.ids
    queries = [({"video": ids[i], "k": 5}, ["--video", ids[i], "-k", "5"]) for i in range(0, 16, 3)]
    queries += [({"video": ids[1], "k": 4, "per_video": True, "labels": ["red_circle"]},
                 ["--video", ids[1], "-k", "4", "--per-video", "--label", "red_circle"]),
                ({"text": "a yellow cross", "k": 3}, ["--text", "a yellow cross", "-k", "3"])]
    expected = [cli_hits(runner, clip_store, *args) for _, args in queries]

    def client_run(c: int) -> list[str]:
        bad = []
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for i in range(100):
                qi = (c * 7 + i) % len(queries)
                r = http.post("/api/search", json=queries[qi][0])
                if r.status_code != 200 or not same_hits(r.json()["hits"], expected[qi]):
                    bad.append(f"client {c} query {i}: {r.status_code} {r.text[:200]}")
        return bad

    with ThreadPoolExecutor(8) as pool:
        failures = [f for bad in pool.map(client_run, range(8)) for f in bad]
    assert not failures, failures[:5]


@pytest.fixture(scope="module")
def vector_queries(clip_store, tmp_path_factory):
    """16 random query vectors as JSON bodies, and `vstore search --vector` 's hits for each."""
    runner, tmp = CliRunner(), tmp_path_factory.mktemp("vectors")
    with Store.open(clip_store) as s:
        vecs = np.random.default_rng(7).normal(size=(16, s.dim)).astype(np.float32)
    expected = []
    for i, v in enumerate(vecs):
        np.save(tmp / f"q{i}.npy", v)
        expected.append(cli_hits(runner, clip_store, "--vector", str(tmp / f"q{i}.npy"), "-k", "5"))
    assert len({tuple(hit_keys(e)) for e in expected}) >= 12  # a mixed-up answer would show
    return [{"vector": v.tolist(), "k": 5} for v in vecs], expected


@pytest.mark.parametrize("max_batch", [32, 1])
def test_concurrent_vector_queries_share_faiss_searches_and_equal_the_cli(clip_store, vector_queries, max_batch):
    """16 clients released together by a barrier, 6 rounds, one search thread: queries queued
    while it searches go into its next (B, D) search, so there are fewer searches than queries
    (each answer still the CLI's for its own vector); with max_batch=1, one search per query."""
    bodies, expected = vector_queries
    rounds = 6
    cfg = ServeConfig(port=0, device="cpu", search_threads=1, max_batch=max_batch)
    with BackgroundServer(clip_store, cfg) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        before = c.get("/api/info").json()["server"]
        answers = concurrent_rounds(srv.url, bodies, rounds)
        after = c.get("/api/info").json()["server"]
    for i, per_round in enumerate(answers):
        for status, res in per_round:
            assert status == 200, res
            assert same_hits(res["hits"], expected[i]), (i, hit_keys(res["hits"]), hit_keys(expected[i]))
    queries, batches = after["queries"] - before["queries"], after["batches"] - before["batches"]
    assert queries == len(bodies) * rounds and after["max_batch"] == max_batch
    if max_batch == 1:
        assert batches == queries
    else:
        assert batches < queries, f"{queries} concurrent queries took {batches} FAISS searches: none was shared"


def test_a_build_committing_while_clients_query(class_videos, tiny_clip_path, tmp_path):
    """Two builds commit (4 videos each) while 4 clients query: every answer is a 200 whose hits
    all exist in the store at the generation it reports (5 distinct videos: never a half-written
    state), and no client ever sees the generation go backwards."""
    from encoders.build import BuildConfig, build_store
    from encoders.registry import load_encoder
    from vstore.labels import load_labels
    videos, labels = class_videos
    first = tmp_path / "first"
    first.mkdir()
    for p in sorted(videos.glob("*.mp4"))[:8]:
        shutil.copy(p, first / p.name)
    store = build_clip_store(first, labels, tiny_clip_path, tmp_path / "store", frames=3)
    with Store.open(store) as s:
        ids_at = {s.generation: set(s.videos.ids)}  # generation -> its videos, after each build
    first_gen = min(ids_at)
    later = [p for p in sorted(videos.glob("*.mp4"))[8:]]
    stop = threading.Event()
    failures: list[str] = []
    seen: list[list[tuple[int, list[str]]]] = [[] for _ in range(4)]  # per client: (generation, hit video ids)
    with BackgroundServer(store, ServeConfig(port=0, device="cpu", poll_s=0.05)) as srv:
        def query(c: int) -> None:
            with httpx.Client(base_url=srv.url, timeout=60) as http:
                while not stop.is_set():
                    r = http.post("/api/search", json={"text": "a red circle", "k": 5, "per_video": True})
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:300]}")
                    else:
                        seen[c].append((r.json()["generation"], [h["video_id"] for h in r.json()["hits"]]))
        threads = [threading.Thread(target=query, args=(c,)) for c in range(4)]
        for t in threads:
            t.start()
        try:
            encoder = load_encoder(f"clip:{tiny_clip_path}", device="cpu")
            for n, part in enumerate((later[:4], later[4:])):
                new = tmp_path / f"new{n}"
                new.mkdir()
                for p in part:
                    shutil.copy(p, new / p.name)
                build_store([new], store, encoder, labels=load_labels(labels), config=BuildConfig(frames=3, workers=0),
                            progress=False)
                with Store.open(store) as s:
                    gen = s.generation
                    ids_at[gen] = set(s.videos.ids)
                # every client answered from this build's generation before the next build starts
                wait_for(lambda gen=gen: failures or all(a and a[-1][0] >= gen for a in seen), 60,
                         f"every client to be answered from generation {gen}")
                assert not failures, failures[:3]
            with httpx.Client(base_url=srv.url, timeout=60) as http:
                newest = later[-1].stem
                r = http.post("/api/search", json={"video": newest, "k": 1, "level": "video"})
                assert r.status_code == 200 and r.json()["hits"][0]["video_id"] == newest
                info = http.get("/api/info").json()
                assert info["videos"] == 16 and info["index"]["state"] == "fresh"
        finally:
            stop.set()
            for t in threads:
                t.join(60)
    assert not any(t.is_alive() for t in threads), "a client still runs 60 s after the stop"
    assert not failures, failures[:3]
    generations = sorted(ids_at)
    for c, answers in enumerate(seen):
        assert answers, f"client {c} got no answer"
        gens = [g for g, _ in answers]
        assert gens == sorted(gens), f"client {c} saw the generation go backwards: {gens}"
        assert gens[0] >= first_gen
        for g, hits in answers:
            at = next(ids_at[x] for x in generations if x >= g)  # the store at g holds at most these videos
            assert len(hits) == 5 == len(set(hits)), (g, hits)
            assert set(hits) <= at, f"generation {g} answered with {set(hits) - at}, added later"
            if g == first_gen:
                assert set(hits) <= ids_at[first_gen]
    assert {g for s in seen for g, _ in s} >= set(ids_at)  # answered from the first and each build's generation


def test_no_refresh_reports_a_stale_index_and_serves_the_last_indexed_generation(tmp_path):
    from test_index import vector_store

    from vstore.index_build import build_index
    store = vector_store(tmp_path / "s", n_videos=20, frames=5)
    build_index(store)
    with BackgroundServer(store, ServeConfig(port=0, refresh=False, poll_s=0.05)) as srv, \
            httpx.Client(base_url=srv.url) as c:
        first = c.get("/api/info").json()["served_generation"]
        vector_store(store, n_videos=5, frames=5, first=20)  # a build commits; the index is now stale
        info = wait_for(lambda: (i := c.get("/api/info").json())["index"]["state"] == "stale" and i, 60,
                        "the server to report the index stale after a build committed")
        assert info["served_generation"] == first and "vstore index" in info["index"]["problem"]
        assert_error(c.post("/api/search", json={"video": "v021", "k": 1}), 404, "v021")  # not served yet
        assert c.post("/api/search", json={"video": "v001", "k": 1}).status_code == 200
        build_index(store)  # `vstore index`: the server picks the new generation up
        wait_for(lambda: (i := c.get("/api/info").json())["index"]["state"] == "fresh"
                 and i["served_generation"] != first, 60, "the server to serve the newly indexed generation")
        r = c.post("/api/search", json={"video": "v021", "k": 1, "level": "video"}).json()
        assert r["hits"][0]["video_id"] == "v021" and r["generation"] > first
