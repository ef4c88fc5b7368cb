"""Fidelity: does ``sample_video`` return the frames a person sees? Compared with ffmpeg.

For every file of a corpus of codecs, containers and awkward geometry (generated once into
benchmarks/out/fidelity/ with the ffmpeg CLI, or PyAV where ffmpeg's CLI cannot write it),
``sample_video(path, N)`` is run in ``exact`` and ``keyframe`` mode (full size) and every
frame it returns is compared with ffmpeg's default decode of the same frame number
(``ffmpeg -i f -vf select=... -fps_mode passthrough -pix_fmt rgb24``: default stream
selection, autorotate on, no SAR rescaling). Per file: whether every shape matches and the
worst per-frame mean absolute difference (MAD, 0-255 scale). Goal: shapes match and MAD <= 1.

Reference: the ffmpeg CLI on PATH (Debian: ``apt-get install ffmpeg``; this was written
against 5.1). PyAV bundles its own FFmpeg (8.x), so decoders and swscale are different builds.

    python benchmarks/fidelity.py            # whole corpus
    python benchmarks/fidelity.py --only hevc10 rot90
    python benchmarks/fidelity.py --speed 5   # cost of rotating: rotated vs upright, CPU time
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import common
import numpy as np

from encoders.video.geometry import center_crop_offsets, resized_size
from encoders.video.orientation import display_width
from encoders.video.sampling import sample_video
from vstore.errors import VStoreError

N = 12  # frames sampled per file and mode
SIZE = 112  # the size= check: resize + centre crop of the displayed frame, vs ffmpeg's scale + crop
GEN_VERSION = 1  # bump when the corpus changes: cached files are remade
SRC = "testsrc2=size={w}x{h}:rate={r}:duration={d}"
X264 = ["-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "24"]

# name -> (file name, ffmpeg arguments after the lavfi input | (clockwise, mirrored) | None: made
# below, source geometry {w, h, r, d} where not 320x240, 30 fps, 2 s).
CORPUS: dict[str, tuple[str, Any, dict]] = {
    "h264": ("h264.mp4", X264 + ["-pix_fmt", "yuv420p"], {}),
    "h264-bt709": ("h264_bt709.mp4", X264 + ["-pix_fmt", "yuv420p", "-colorspace", "bt709",
                                             "-color_primaries", "bt709", "-color_trc", "bt709"], {"w": 640, "h": 360}),
    "h264-fullrange": ("h264_full.mp4", X264 + ["-pix_fmt", "yuvj420p"], {}),
    "h264-interlaced": ("h264_tff.mkv", X264 + ["-pix_fmt", "yuv420p", "-flags", "+ildct+ilme", "-x264-params",
                                                "interlaced=1:tff=1"], {"w": 352, "h": 288}),
    "hevc8": ("hevc8.mp4", ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                            "-x265-params", "log-level=error:keyint=24"], {}),
    "hevc10": ("hevc10.mkv", ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le",
                              "-x265-params", "log-level=error:keyint=24"], {}),
    "hevc10-bt709": ("hevc10_bt709.mp4", ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le",
                                          "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
                                          "-x265-params", "log-level=error:keyint=24"], {"w": 640, "h": 360}),
    "vp8": ("vp8.webm", ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M", "-g", "24"], {}),
    "vp9": ("vp9.webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M",
                         "-g", "24"], {}),
    "av1": ("av1.mkv", ["-c:v", "libaom-av1", "-cpu-used", "8", "-usage", "realtime", "-row-mt", "1",
                        "-b:v", "1M", "-g", "24"], {}),
    "prores": ("prores.mov", ["-c:v", "prores_ks", "-profile:v", "2", "-pix_fmt", "yuv422p10le"], {}),
    "mpeg2-ts": ("mpeg2.ts", ["-c:v", "mpeg2video", "-q:v", "3", "-bf", "2", "-g", "12"], {"w": 352, "h": 288}),
    "mpeg2-ts-interlaced": ("mpeg2_tff.ts", ["-c:v", "mpeg2video", "-q:v", "3", "-bf", "2", "-g", "12",
                                             "-flags", "+ildct+ilme", "-top", "1"], {"w": 720, "h": 576, "r": 25}),
    "mjpeg": ("mjpeg.avi", ["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"], {}),
    "theora": ("theora.ogv", ["-c:v", "libtheora", "-q:v", "7", "-g", "24"], {}),
    "flv1": ("flv1.flv", ["-c:v", "flv", "-q:v", "3", "-g", "24"], {}),
    "flv-h264": ("h264.flv", X264 + ["-pix_fmt", "yuv420p"], {}),
    # Display matrices, written with PyAV (ffmpeg 5.1's CLI has no -display_rotation and no longer
    # turns a "rotate" tag into one): (clockwise degrees, mirrored); rot90 is a portrait phone clip.
    "rot90": ("rot90.mp4", (90, False), {}),
    "rot180": ("rot180.mp4", (180, False), {}),
    "rot270": ("rot270.mov", (270, False), {}),
    "rot90-hflip": ("rot90_hflip.mp4", (90, True), {}),
    "anamorphic": ("anamorphic.mp4", X264 + ["-pix_fmt", "yuv420p", "-vf", "setsar=64/45"], {"w": 352, "h": 288}),
    "odd-vp9": ("odd.webm", ["-vf", "crop=321:241:0:0:exact=1", "-c:v", "libvpx-vp9", "-deadline", "realtime",
                             "-cpu-used", "8", "-b:v", "1M", "-g", "24"], {"w": 322, "h": 242}),
    "odd-h264-444": ("odd444.mp4", ["-vf", "crop=321:241:0:0:exact=1"] + X264 + ["-pix_fmt", "yuv444p"], {"w": 322, "h": 242}),
    # irregular gaps of 18-62 ms (timestamps in ms)
    "vfr": ("vfr.mp4", X264 + ["-pix_fmt", "yuv420p", "-vf", r"settb=1/1000,setpts=(N*40+mod(N*N\,23))/1000/TB",
                               "-fps_mode", "passthrough", "-enc_time_base", "1/1000", "-video_track_timescale", "1000"], {}),
    "two-stream": ("two_stream.mkv", None, {}),  # made below: main video, audio, a small second video
}


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


def make(name: str, folder: Path) -> Path:
    fname, args, geo = CORPUS[name]
    path = folder / fname
    if path.is_file():
        return path
    w, h, r, d = geo.get("w", 320), geo.get("h", 240), geo.get("r", 30), geo.get("d", 2)
    src = ["-f", "lavfi", "-i", SRC.format(w=w, h=h, r=r, d=d)]
    tmp = path.with_name("tmp-" + path.name)
    if name == "two-stream":
        ffmpeg(*src, "-f", "lavfi", "-i", f"sine=frequency=440:duration={d}",
               "-f", "lavfi", "-i", SRC.format(w=160, h=120, r=15, d=d),
               "-map", "0:v", "-map", "1:a", "-map", "2:v", *X264, "-pix_fmt", "yuv420p", "-c:a", "libopus",
               str(tmp))
    elif isinstance(args, tuple):
        import av
        clockwise, mirrored = args
        plain = make("h264", folder)
        with av.open(str(plain)) as inp, av.open(str(tmp), "w") as out:
            s = out.add_stream("libx264", rate=30, options={"preset": "veryfast", "bf": "2", "g": "24"})
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            # PyAV counts counter-clockwise and mirrors after rotating: mirror-then-rotate-clockwise
            # by r is rotate-counter-clockwise by r, then mirror.
            s.set_display_rotation(-clockwise % 360 if not mirrored else clockwise % 360, hflip=mirrored)
            for i, frame in enumerate(inp.decode(video=0)):
                frame.pts, frame.time_base = i, Fraction(1, 30)
                for p in s.encode(frame):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)
    else:
        ffmpeg(*src, *args, str(tmp))
    tmp.rename(path)
    return path


def reference(path: Path, indices: list[int], then: str = "") -> list[np.ndarray]:
    """ffmpeg's default decode of frames ``indices`` (presentation order), RGB24; ``then``: more
    filters after the selection."""
    sel = "+".join(f"eq(n\\,{i})" for i in indices)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-vf", f"select={sel}{then}",
                          "-fps_mode", "passthrough", "-f", "image2pipe", "-c:v", "ppm", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    out, pos = [], 0
    while pos < len(raw):  # PPM: "P6\n<w> <h>\n255\n" + w*h*3 bytes
        fields, p = [], pos
        while len(fields) < 4:
            while raw[p:p + 1].isspace():
                p += 1
            q = p
            while not raw[q:q + 1].isspace():
                q += 1
            fields.append(raw[p:q])
            p = q
        w, h = int(fields[1]), int(fields[2])
        p += 1
        out.append(np.frombuffer(raw, np.uint8, w * h * 3, p).reshape(h, w, 3))
        pos = p + w * h * 3
    return out


def plain_pyav(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """What vstore returned before display matrices were applied: PyAV's ``to_ndarray``."""
    import av
    want, out = set(indices), {}
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i in want:
                out[i] = frame.to_ndarray(format="rgb24")
    return out


def mad(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> Optional[float]:
    """Mean absolute difference, None when the shapes differ."""
    if a is None or b is None or a.shape != b.shape:
        return None
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def resize_filters(path: Path, r, size: int) -> str:
    """ffmpeg filters doing to its (rotated) decode what ``size`` promises: the sample aspect
    ratio applied, shorter side to ``size`` (bicubic), centre crop."""
    import av
    with av.open(str(path)) as c:
        sar = c.streams.video[0].sample_aspect_ratio
    w, h = r.width, r.height  # as displayed, square pixels
    w, h = (w, display_width(h, sar)) if r.rotation in (90, 270) else (display_width(w, sar), h)
    rw, rh = resized_size(w, h, size)
    top, left = center_crop_offsets(rw, rh, size)
    return f",scale={rw}:{rh}:flags=bicubic,crop={size}:{size}:{left}:{top}"


def check(path: Path, mode: str, size: Optional[int] = None) -> dict:
    t = time.perf_counter()
    r = sample_video(path, N, mode=mode, size=size)
    sample_s = time.perf_counter() - t
    idx = [int(i) for i in r.indices]
    ref = reference(path, idx, resize_filters(path, r, size) if size else "")
    before = plain_pyav(path, idx) if size is None else {}
    frames = []
    for k, i in enumerate(idx):
        got = r.images[k]
        want = ref[k] if k < len(ref) else None
        frames.append({"index": i, "shape": list(got.shape), "ffmpeg_shape": list(want.shape) if want is not None
                       else None, "shape_match": want is not None and want.shape == got.shape, "mad": mad(got, want),
                       "before_mad": mad(before.get(i), want)})
    mads = [f["mad"] for f in frames if f["mad"] is not None]
    old = [f["before_mad"] for f in frames]
    return {"mode": mode, "frames": len(idx), "ffmpeg_frames": len(ref), "rotation": r.rotation, "hflip": r.hflip,
            "shape": list(r.images.shape[1:]), "shape_match": all(f["shape_match"] for f in frames),
            "max_mad": round(max(mads), 3) if mads else None, "mean_mad": round(float(np.mean(mads)), 3) if mads else None,
            "before_max_mad": "-" if size else round(max(old), 3) if old and None not in old else "shape",
            "sample_s": round(sample_s, 3), "per_frame": frames}


def probe_line(path: Path) -> str:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=codec_name,pix_fmt,width,height,sample_aspect_ratio,color_space,color_range,"
                          "field_order", "-of", "default=nw=1:nk=0", str(path)], capture_output=True, text=True).stdout
    return " ".join(out.split())


def remux_rotated(src: Path, dst: Path, clockwise: int) -> Path:
    """``src``'s video packets unchanged, with a display matrix turning them ``clockwise``."""
    import av
    if dst.is_file():
        return dst
    tmp = dst.with_name("tmp-" + dst.name)
    with av.open(str(src)) as inp, av.open(str(tmp), "w") as out:
        s_in = inp.streams.video[0]
        s = out.add_stream_from_template(s_in)
        s.set_display_rotation(-clockwise % 360)
        for packet in inp.demux(s_in):
            if packet.dts is None:
                continue
            packet.stream = s
            out.mux(packet)
    tmp.rename(dst)
    return dst


class ToNdarray:
    """The converter sample_video used before display matrices: PyAV's ``to_ndarray`` (resized
    in the same swscale call with ``size``), no orientation: the baseline of ``--speed``."""

    orientation = None

    def __init__(self, size: Optional[int], stream):
        self.size, self.w, self.h = size, stream.codec_context.width, stream.codec_context.height

    def __call__(self, frame) -> np.ndarray:
        if self.size is None:
            return frame.to_ndarray(format="rgb24")
        w, h = resized_size(self.w, self.h, self.size)
        top, left = center_crop_offsets(w, h, self.size)
        rgb = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="BICUBIC")
        return np.ascontiguousarray(rgb[top:top + self.size, left:left + self.size])


def with_to_ndarray(path: Path, size: Optional[int]):
    from encoders.video import sampling
    keep = sampling.make_converter
    sampling.make_converter = ToNdarray
    try:
        return sample_video(path, 100, size=size)
    finally:
        sampling.make_converter = keep


def speed(repeats: int) -> dict:
    """CPU time of ``sample_video(100 frames)`` on bench_sampling's 1-minute 640x360 H.264 video,
    on the same packets with a 90-degree display matrix, and with the old ``to_ndarray``
    converter; interleaved rounds."""
    src = common.OUT / "sampling" / "video_1min.mp4"
    if not src.is_file():
        sys.exit(f"{src} is missing: run `python benchmarks/bench_sampling.py --quick` once first")
    rot = remux_rotated(src, common.out_dir("fidelity") / "video_1min_rot90.mp4", 90)
    src.read_bytes(), rot.read_bytes()
    assert sample_video(rot, 1).rotation == 90
    same = [np.array_equal(a, b) for a, b in zip(sample_video(src, 100).images, with_to_ndarray(src, None).images)]
    cases = {f"{name}{'' if size is None else f' size={size}'}": (lambda p=p, size=size: sample_video(p, 100, size=size))
             for name, p in (("upright", src), ("rot90", rot)) for size in (None, 224)}
    cases.update({"to_ndarray": lambda: with_to_ndarray(src, None),
                  "to_ndarray size=224": lambda: with_to_ndarray(src, 224)})
    t = common.interleaved(cases, repeats, warmup=1)["cpu"]
    out = {"median_cpu_s": {k: round(common.med(v), 4) for k, v in t.items()},
           "rot90_over_upright": round(common.ratio(t, "rot90", "upright"), 3),
           "rot90_over_upright_size224": round(common.ratio(t, "rot90 size=224", "upright size=224"), 3),
           "upright_over_to_ndarray": round(common.ratio(t, "upright", "to_ndarray"), 3),
           "upright_over_to_ndarray_size224": round(common.ratio(t, "upright size=224", "to_ndarray size=224"), 3),
           "full_size_frames_identical_to_to_ndarray": all(same), "load_average": common.load_average()}
    print(f"sample_video(100 frames), 1-min 640x360 H.264, CPU s (median of {repeats} interleaved rounds):")
    common.table([[k, v] for k, v in out["median_cpu_s"].items()], ["case", "CPU s"])
    print(f"rotated / upright: full size {out['rot90_over_upright']:.3f}x, size=224 "
          f"{out['rot90_over_upright_size224']:.3f}x; upright / old to_ndarray converter: full size "
          f"{out['upright_over_to_ndarray']:.3f}x, size=224 {out['upright_over_to_ndarray_size224']:.3f}x "
          f"(full-size frames identical: {all(same)}); load average {out['load_average']}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", help="corpus entries to check (default: all)")
    p.add_argument("--speed", type=int, metavar="ROUNDS", help="instead: the cost of a display matrix "
                   "(a rotated remux of bench_sampling's 1-min video vs the original)")
    args = p.parse_args()
    if args.speed:
        common.save("fidelity_speed", speed(args.speed))
        return
    if not shutil.which("ffmpeg"):
        sys.exit("needs the ffmpeg CLI on PATH (Debian/Ubuntu: apt-get install ffmpeg)")
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    folder = common.out_dir("fidelity", f"v{GEN_VERSION}")
    names = args.only or list(CORPUS)
    rows, results = [], []
    for name in names:
        path = make(name, folder)
        for mode, size in (("exact", None), ("keyframe", None), ("exact", SIZE)):
            try:
                r = check(path, mode, size)
            except (VStoreError, subprocess.CalledProcessError) as e:  # reported, not fatal
                r = {"mode": mode, "error": str(e), "shape": [0, 0], "rotation": 0, "hflip": False, "frames": 0,
                     "shape_match": False, "max_mad": None, "mean_mad": None, "before_max_mad": None}
            r.update(name=name, file=path.name, probe=probe_line(path))
            results.append(r)
            ok = r["shape_match"] and r["max_mad"] is not None and r["max_mad"] <= 1
            mode = mode if size is None else f"{mode} size={size}"
            rows.append([name, mode, "x".join(map(str, r["shape"][:2])), f"{r['rotation']}{' hflip' if r['hflip'] else ''}",
                         r["frames"],
                         "yes" if r["shape_match"] else "NO", r["max_mad"], r["mean_mad"], r["before_max_mad"],
                         "PASS" if ok else "FAIL"])
    print(f"reference: {version}; sampled {N} frames per file and mode, full size")
    common.table(rows, ["file", "mode", "HxW", "rotation", "frames", "shape ok", "max MAD", "mean MAD",
                        "before: max MAD", "goal"])
    print("(before: PyAV's to_ndarray without the display matrix, what sample_video returned until now; "
          "'shape' = wrong shape)")
    passed = sum(r[-1] == "PASS" for r in rows)
    print(f"\n{passed}/{len(rows)} file x mode checks within the goal (shapes match, MAD <= 1)")
    common.save("fidelity", {"reference": version, "n": N, "results": results})


if __name__ == "__main__":
    main()
