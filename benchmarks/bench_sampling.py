"""Benchmark 1: sampling 100 frames (exact) from 1-, 5- and 30-minute 640x360 H.264 videos.

Compares ``sample_video(path, 100, mode="exact")`` with
  * decode+convert-all: decode every frame with PyAV and convert every one to RGB;
  * the lower bound: for each GOP holding targets, seek to its keyframe, decode up to the
    last target in it, convert only the targets (PyAV directly, keyframes found from packet
    pts by one demux pass that is not timed);
and reports ``mode="keyframe"``, exact at ``size=224`` (what ``vstore build`` asks for), the
demux-only index pass, and plain-PyAV versions of the two tricks ``sample_video`` uses
beyond the lower bound (checked to return identical frames): non-reference frames that
are not targets skipped by the decoder, and, for keyframe mode, the decoder drained after
each keyframe's packet.
Every decoder runs single-threaded, as in a build's decode workers (``decode_threads=1``).

Videos: 640x360, 30 fps, libx264 veryfast, x264's default keyint 250 (scene cuts add
keyframes), B-frames on; plus in full runs a 5-minute video with 2-second GOPs (keyint 60).
Generated once into benchmarks/out/sampling/ (the 30-minute one takes about 4-5 minutes).

Goals (5-minute, keyint 250): decode+convert-all / exact >= 8, exact / lower bound <= 1.3.

    python benchmarks/bench_sampling.py            # 1, 5, 5 (keyint 60), 30 min
    python benchmarks/bench_sampling.py --quick    # 1 and 5 min, 2 rounds
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import av
import common
import numpy as np

from encoders.video.sampling import probe, sample_video

W, H, FPS = 640, 360, 30
N = 100
# keyint 250 / min-keyint 25 / scenecut 40 are x264's defaults, B-frames on (veryfast: 3, adaptive).
X264 = {"preset": "veryfast", "crf": "23", "x264-params": "keyint=250:min-keyint=25:scenecut=40:bframes=3"}
GEN_VERSION = 2  # bump when the generator changes: cached videos are remade


# -- synthetic "realistic" video ---------------------------------------------------------------
def _textures(rng: np.random.Generator, n: int = 6, tw: int = 1024, th: int = 640) -> list[np.ndarray]:
    """1/f-noise images (natural-image-like spectrum) with fine grain: not trivially compressible."""
    fy, fx = np.fft.fftfreq(th)[:, None], np.fft.rfftfreq(tw)[None, :]
    spectrum = (1.0 / (1e-3 + np.sqrt(fx ** 2 + fy ** 2)) ** 1.6)[..., None]
    out = []
    for _ in range(n):
        f = np.fft.rfft2(rng.standard_normal((th, tw, 3)).astype(np.float32), axes=(0, 1)) * spectrum
        s = np.fft.irfft2(f, s=(th, tw), axes=(0, 1))
        s = (s - s.mean()) / s.std()
        out.append(np.clip(128 + 45 * s + rng.normal(0, 5, s.shape), 0, 255).astype(np.uint8))
    return out


def _yuv_textures(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = []
    for t in _textures(rng):
        th, tw = t.shape[:2]
        a = av.VideoFrame.from_ndarray(t, format="rgb24").reformat(format="yuv420p").to_ndarray()
        out.append((a[:th], a[th:th + th // 4].reshape(th // 2, tw // 2), a[th + th // 4:].reshape(th // 2, tw // 2)))
    return out


def synthetic_frames(n: int, seed: int = 0):
    """yuv420p frames (drawn in YUV: no RGB conversion per frame): shots of 3-12 s with hard
    cuts (x264 puts keyframes there), each a panning textured background, a moving dark band
    and a moving solid box."""
    rng = np.random.default_rng(seed)
    tex = _yuv_textures(rng)
    th, tw = tex[0][0].shape
    buf = np.empty((H * 3 // 2, W), np.uint8)  # PyAV's yuv420p layout: Y rows, then U, then V
    Y, U, V = buf[:H], buf[H:H + H // 4].reshape(H // 2, W // 2), buf[H + H // 4:].reshape(H // 2, W // 2)
    i = 0
    while i < n:
        shot = int(rng.integers(3 * FPS, 12 * FPS))
        ty, tu, tv = tex[int(rng.integers(len(tex)))]
        x0, y0, vx, vy = rng.uniform(0, tw - W), rng.uniform(0, th - H), rng.uniform(-3, 3), rng.uniform(-1.5, 1.5)
        bx, by, bvx, bvy = rng.uniform(0, W - 80), rng.uniform(0, H - 80), rng.uniform(-6, 6), rng.uniform(-4, 4)
        color = rng.integers(16, 240, 3).astype(np.uint8)
        for j in range(min(shot, n - i)):
            x, y = (int(x0 + vx * j) % (tw - W)) & ~1, (int(y0 + vy * j) % (th - H)) & ~1
            Y[:] = ty[y:y + H, x:x + W]
            U[:] = tu[y // 2:(y + H) // 2, x // 2:(x + W) // 2]
            V[:] = tv[y // 2:(y + H) // 2, x // 2:(x + W) // 2]
            c = ((j * 4) % W) & ~1
            Y[:, c:c + 40] //= 2
            px, py = (int(bx + bvx * j) % (W - 80)) & ~1, (int(by + bvy * j) % (H - 80)) & ~1
            Y[py:py + 80, px:px + 80] = color[0]
            U[py // 2:py // 2 + 40, px // 2:px // 2 + 40] = color[1]
            V[py // 2:py // 2 + 40, px // 2:px // 2 + 40] = color[2]
            yield av.VideoFrame.from_ndarray(buf, format="yuv420p")
            i += 1


def encode_video(path: Path, n_frames: int, seed: int = 0, x264: dict = X264) -> Path:
    """Write ``n_frames`` of ``synthetic_frames`` as 640x360 H.264 (atomically: .tmp then rename)."""
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options=dict(x264))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for frame in synthetic_frames(n_frames, seed=seed):
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    tmp.replace(path)
    return path


def make_video(minutes: int, keyint: int = 250) -> tuple[Path, dict]:
    """The cached ``minutes``-long video (generated on first use) and its generation facts."""
    x264 = {**X264, "x264-params": X264["x264-params"].replace("keyint=250", f"keyint={keyint}")}
    path = common.out_dir("sampling") / (f"video_{minutes}min.mp4" if keyint == 250 else f"video_{minutes}min_k{keyint}.mp4")
    meta_path = path.with_suffix(".json")
    want = {"version": GEN_VERSION, "x264": x264, "size": [W, H], "fps": FPS, "minutes": minutes}
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(k) == v for k, v in want.items()):
            return path, meta
    print(f"generating {path.name} ({minutes} min, {minutes * 60 * FPS} frames)...", flush=True)
    t = time.perf_counter()
    encode_video(path, minutes * 60 * FPS, seed=minutes, x264=x264)
    seconds = time.perf_counter() - t
    meta = {**want, "generation_s": round(seconds, 1), "bytes": path.stat().st_size,
            "mbps": round(path.stat().st_size * 8 / (minutes * 60) / 1e6, 3)}
    meta_path.write_text(json.dumps(meta, indent=2))
    print(f"  {seconds:.0f} s, {meta['mbps']} Mbit/s", flush=True)
    return path, meta


# -- baselines, PyAV only (independent of vstore's sampler) -------------------------------------
def _open(path: Path):
    c = av.open(str(path))
    s = c.streams.video[0]
    s.thread_type, s.thread_count = "SLICE", 1  # single-threaded, like sample_video(threads=1)
    return c, s


def packet_index(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(pts of every frame in presentation order, pts of keyframes) from one demux pass."""
    c, s = _open(path)
    with c:
        pts, keys = [], []
        for p in c.demux(s):
            if p.size == 0 or p.pts is None:
                continue
            pts.append(p.pts)
            if p.is_keyframe:
                keys.append(p.pts)
    return np.sort(np.asarray(pts, np.int64)), np.sort(np.asarray(keys, np.int64))


def targets(total: int, n: int = N) -> np.ndarray:
    return np.floor((np.arange(n) + 0.5) * total / n).astype(np.int64)  # the sampling rule


def decode_convert_all(path: Path) -> int:
    c, s = _open(path)
    n = 0
    with c:
        for frame in c.decode(s):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def lower_bound(path: Path, pts: np.ndarray, key_pts: np.ndarray, target_pts: np.ndarray,
                stats: dict | None = None, skip_nonref: bool = False) -> list[np.ndarray]:
    """Seek to each GOP that holds targets, decode to its last target, convert the targets.

    ``skip_nonref`` goes below that bound: the decoder drops non-reference frames (no other
    frame is predicted from them) unless they are targets; the targets come out identical.
    """
    gop = np.searchsorted(key_pts, target_pts, side="right") - 1
    images, decoded = {}, 0
    c, s = _open(path)
    cc = s.codec_context
    with c:
        for g in np.unique(gop):
            want = set(int(p) for p in target_pts[gop == g])
            last = max(want)
            c.seek(int(key_pts[g]) if g >= 0 else 0, stream=s, backward=True, any_frame=False)
            done = False
            for packet in c.demux(s):
                if skip_nonref:  # read by the decoder per packet (single-threaded decoding)
                    cc.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in want else "NONREF"
                for frame in packet.decode():
                    decoded += 1
                    if frame.pts in want:
                        images[frame.pts] = frame.to_ndarray(format="rgb24")
                    if frame.pts >= last:
                        done = True
                        break
                if done:
                    break
        cc.skip_frame = "DEFAULT"
    if stats is not None:
        stats["decoded"] = decoded
    return [images[int(p)] for p in target_pts]


def keyframes_drained(path: Path, want_pts: np.ndarray) -> list[np.ndarray]:
    """Experiment for keyframe mode: seek to each wanted keyframe, decode its packet alone and
    drain the decoder (no reordering wait: no further packets fed), convert it."""
    images = {}
    c, s = _open(path)
    with c:
        for w in want_pts:
            c.seek(int(w), stream=s, backward=True, any_frame=False)
            for packet in c.demux(s):
                if packet.pts == w:
                    for frame in [*packet.decode(), *s.codec_context.decode(None)]:
                        if frame.pts == w:
                            images[int(w)] = frame.to_ndarray(format="rgb24")
                    break
    return [images[int(w)] for w in want_pts]


def count_exact_decodes(path: Path) -> tuple[object, int]:
    """sample_video(exact) with vstore's internal frame iterator wrapped to count decoded frames."""
    import encoders.video.sampling as sampling
    original, n = sampling._frames, [0]

    def counting(container, stream, wanted=None):
        for f in original(container, stream, wanted):
            n[0] += 1
            yield f
    sampling._frames = counting
    try:
        return sample_video(path, N, mode="exact"), n[0]
    finally:
        sampling._frames = original


def vstore_probe(path: Path) -> None:
    c, s = _open(path)
    with c:
        probe(c, s, path)


# -- the benchmark --------------------------------------------------------------------------------
def bench_video(minutes: int, keyint: int, repeats: int) -> dict:
    path, meta = make_video(minutes, keyint)
    path.read_bytes()  # page cache warm for every case alike
    pts, key_pts = packet_index(path)
    tgt = targets(len(pts))
    target_pts = pts[tgt]
    gaps = np.diff(np.searchsorted(pts, key_pts))

    # Correctness first (untimed): exact must return exactly the lower bound's frames.
    lb_stats: dict = {}
    ref = lower_bound(path, pts, key_pts, target_pts, lb_stats)
    got, exact_decoded = count_exact_decodes(path)
    same = bool(np.array_equal(got.indices, tgt) and all(np.array_equal(a, b) for a, b in zip(got.images, ref)))
    nonref_stats: dict = {}
    nonref = lower_bound(path, pts, key_pts, target_pts, nonref_stats, skip_nonref=True)
    nonref_same = all(np.array_equal(a, b) for a, b in zip(nonref, ref))
    kf = sample_video(path, N, mode="keyframe")
    kf_pts = pts[kf.indices]
    drained_same = all(np.array_equal(a, b) for a, b in zip(keyframes_drained(path, kf_pts), kf.images))

    cases = {
        "decode+convert all": lambda: decode_convert_all(path),
        "lower bound": lambda: lower_bound(path, pts, key_pts, target_pts),
        "exact": lambda: sample_video(path, N, mode="exact"),
        "exact size=224": lambda: sample_video(path, N, mode="exact", size=224),
        "keyframe": lambda: sample_video(path, N, mode="keyframe"),
        "index (demux only)": lambda: vstore_probe(path),
        "lower bound, skip non-ref": lambda: lower_bound(path, pts, key_pts, target_pts, skip_nonref=True),
        "keyframes, drain decoder": lambda: keyframes_drained(path, kf_pts),
    }
    t = common.interleaved(cases, repeats, warmup=0)
    times, wall = t["cpu"], t["wall"]  # single-process, single-threaded cases: CPU time is primary
    return {
        "video": path.name, "minutes": minutes, "keyint": keyint, "frames": int(len(pts)),
        "keyframes": int(len(key_pts)), "mean_gop": round(float(gaps.mean()), 1) if len(gaps) else None,
        "mbps": meta.get("mbps"), "generation_s": meta.get("generation_s"), "x264": meta.get("x264"),
        "frames_decoded": {"lower bound": lb_stats["decoded"], "exact": exact_decoded,
                           "lower bound, skip non-ref (output)": nonref_stats["decoded"]},
        "exact_equals_lower_bound": same, "skip_nonref_equals_lower_bound": nonref_same,
        "keyframes_drained_equal_keyframe_mode": drained_same,
        "median_cpu_s": {k: round(common.med(v), 4) for k, v in times.items()},
        "median_wall_s": {k: round(common.med(v), 4) for k, v in wall.items()},
        "times": t,
        "decode_all_over_exact": common.ratio(times, "decode+convert all", "exact"),
        "exact_over_lower_bound": common.ratio(times, "exact", "lower bound"),
        "decode_all_over_lower_bound": common.ratio(times, "decode+convert all", "lower bound"),
        "decode_all_over_exact224": common.ratio(times, "decode+convert all", "exact size=224"),
        "decode_all_over_keyframe": common.ratio(times, "decode+convert all", "keyframe"),
        "nonref_over_lower_bound": common.ratio(times, "lower bound, skip non-ref", "lower bound"),
        "drained_over_keyframe": common.ratio(times, "keyframes, drain decoder", "keyframe"),
        "wall_decode_all_over_exact": common.ratio(wall, "decode+convert all", "exact"),
        "wall_exact_over_lower_bound": common.ratio(wall, "exact", "lower bound"),
    }


def label(r: dict) -> str:
    return f"{r['minutes']} min" + ("" if r["keyint"] == 250 else f" keyint {r['keyint']}")


def main() -> None:
    p = common.parser(__doc__.split("\n")[0], repeats=3)
    args = p.parse_args()
    # (minutes, x264 keyint): the goal is judged on x264's default keyint 250; the 2-second
    # GOP (keyint 60, what streaming encoders use) shows how much the GOP length decides.
    videos = [(1, 250), (5, 250)] if args.quick else [(1, 250), (5, 250), (5, 60), (30, 250)]
    repeats = min(args.repeats, 2) if args.quick else args.repeats
    print(f"single-threaded decoding; {N} targets; {repeats} interleaved rounds; each video file read once "
          f"before timing (page cache warm); CPU time of this process (wall clock alongside); "
          f"load average {common.load_average()}")
    results = []
    for minutes, keyint in videos:
        r = bench_video(minutes, keyint, repeats)
        results.append(r)
        print(f"\n{label(r)}: {r['frames']} frames, {r['keyframes']} keyframes (mean GOP {r['mean_gop']} frames), "
              f"{r['mbps']} Mbit/s; frames decoded: {r['frames_decoded']}; exact == lower-bound frames: "
              f"{r['exact_equals_lower_bound']}")
        ex = r["median_cpu_s"]["exact"]
        common.table([[k, v, r["median_wall_s"][k], v / ex] for k, v in r["median_cpu_s"].items()],
                     ["case", "CPU s", "wall s", "CPU / exact"])

    print("\nratios of CPU times (median of per-round ratios; wall-clock ratios in the JSON)")
    common.table([[label(r), r["decode_all_over_exact"], r["exact_over_lower_bound"], r["decode_all_over_lower_bound"],
                   r["decode_all_over_exact224"], r["decode_all_over_keyframe"], r["nonref_over_lower_bound"],
                   r["drained_over_keyframe"]] for r in results],
                 ["video", "all/exact", "exact/lower", "all/lower", "all/exact224", "all/keyframe", "skip-nonref/lower",
                  "drained/keyframe"])
    five = next(r for r in results if r["minutes"] == 5 and r["keyint"] == 250)
    print()
    verdicts = [
        common.verdict("5-min decode+convert-all / exact", five["decode_all_over_exact"], 8, True),
        common.verdict("5-min exact / lower bound", five["exact_over_lower_bound"], 1.3, False),
    ]
    print(f"(wall clock: {five['wall_decode_all_over_exact']:.2f}x and {five['wall_exact_over_lower_bound']:.2f}x)")
    print(f"(5-min decode+convert-all / lower bound: {five['decode_all_over_lower_bound']:.2f}x seeking GOP by GOP, "
          f"{five['decode_all_over_lower_bound'] / five['nonref_over_lower_bound']:.2f}x skipping non-reference frames too)")
    if not all(r["exact_equals_lower_bound"] for r in results):
        print("WARNING: exact sampling returned other frames than the lower-bound decoder")
    if not all(r["skip_nonref_equals_lower_bound"] and r["keyframes_drained_equal_keyframe_mode"] for r in results):
        print("WARNING: an experiment returned other frames than the case it stands in for")
    common.save("bench_sampling" + ("_quick" if args.quick else ""),
                {"repeats": repeats, "results": results, "verdicts": verdicts})


if __name__ == "__main__":
    main()
