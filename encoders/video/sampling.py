"""Exact, fast sampling of N evenly spaced frames from a video with PyAV.

Frame ``i`` of ``N`` is the video's frame ``floor((i + 0.5) * total / N)`` in presentation
order, where ``total`` is counted by demuxing packets (cheap, and right for WebM, MPEG-TS and
variable frame rate files whose container metadata is 0 or wrong).

``exact`` mode decodes forward while the next target lies in the GOP being decoded and seeks
to the keyframe before the target otherwise, so it decodes close to the minimum number of
frames; only the frames kept are converted to RGB (``convert``), resized during the conversion.
``keyframe`` mode returns the keyframes nearest to the targets (approximate, much faster).

Every image is returned as a person sees the video: the stream's display matrix (phone
videos: 90/270 degrees; flips) is applied as ffmpeg's default decode does, and ``size``
resizes and crops the displayed frame (``orientation``).

This module imports no torch: it runs in the decode worker processes.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Sequence

import av
import numpy as np

from vstore.records import evenly_spaced as target_indices  # frame i of N: floor((i + 0.5) * total / N)
from vstore.records import key_frame_index

from ..errors import VideoError
from .convert import make_converter
from .orientation import UPRIGHT

log = logging.getLogger(__name__)

SAMPLING_MODES = ("exact", "keyframe")
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg",
    ".flv", ".wmv", ".3gp", ".ogv",
})


@dataclass
class VideoProbe:
    """What demuxing (no decoding) tells about a video stream."""

    total_frames: int
    pts: np.ndarray  # (F,) int64 presentation timestamps in presentation order
    keyframes: np.ndarray  # (K,) int64 presentation positions of keyframes, ascending
    time_base: Fraction
    duration: float  # seconds, first frame start to last frame end
    width: int
    height: int
    codec: str

    def seconds(self, pts: int) -> float:
        return float((pts - int(self.pts[0])) * self.time_base)


@dataclass
class SampledVideo:
    """The frames kept from one video, ready for an encoder."""

    total_frames: int
    duration: float
    width: int  # as displayed (swapped with height for a 90/270-degree display matrix)
    height: int
    indices: np.ndarray  # (N,) int64 frame numbers
    timestamps: np.ndarray  # (N,) float64 seconds since the first frame
    images: np.ndarray  # (N, H, W, 3) uint8 RGB as displayed (H = W = size when a size was asked for)
    rotation: int = 0  # clockwise degrees applied for display (0, 90, 180, 270), see orientation.py
    hflip: bool = False  # mirrored left-right (before the rotation) for display
    key_frame_index: int = -1
    key_frame_time: float = math.nan
    key_frame_image: Optional[np.ndarray] = None  # (H, W, 3) uint8


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as e:
        raise VideoError(f"{path}: not a readable video container ({e})") from None


def _video_stream(container, path: Path):
    streams = [s for s in container.streams.video
               if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not streams:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise VideoError(f"{path}: no video stream (has {', '.join(kinds)})")
    return streams[0]


def probe(container, stream, path: Path) -> VideoProbe:
    """Demux every packet of ``stream`` (no decoding) to count frames and find keyframes."""
    pts, key_pts, ends = [], [], []
    missing_pts = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream flush packet
            p = packet.pts if packet.pts is not None else packet.dts
            if p is None:
                missing_pts += 1
                continue
            pts.append(p)
            ends.append(p + (packet.duration or 0))
            if packet.is_keyframe:
                key_pts.append(p)
    except av.FFmpegError as e:
        if not pts:
            raise VideoError(f"{path}: cannot read packets ({e})") from None
        log.warning("%s: stopped reading packets early (%s); using the %d read", path, e, len(pts))
    if missing_pts and not pts:
        raise VideoError(f"{path}: packets carry no timestamps; remux it (e.g. ffmpeg -i in -c copy out.mp4)")
    if not pts:
        raise VideoError(f"{path}: video stream has no frames")
    order = np.sort(np.asarray(pts, dtype=np.int64))
    if len(np.unique(order)) != len(order):
        raise VideoError(f"{path}: duplicate frame timestamps; remux it (ffmpeg -i in -c copy out.mp4)")
    keys = np.searchsorted(order, np.asarray(sorted(key_pts), dtype=np.int64))
    tb = stream.time_base or Fraction(1, 1)
    cc = stream.codec_context
    return VideoProbe(
        total_frames=len(order), pts=order, keyframes=np.unique(keys).astype(np.int64), time_base=tb,
        duration=float((max(ends) - int(order[0])) * tb), width=int(cc.width or 0), height=int(cc.height or 0),
        codec=cc.name or "?",
    )


class _Missed(Exception):
    """A target frame did not come out of the decoder where the packet table said it would."""


def _frames(container, stream, wanted: Optional[set[int]] = None):
    """Decoded frames from the current position. With ``wanted`` (pts of the frames to keep),
    the decoder skips non-reference frames that are not wanted: nothing is predicted from
    them, so the output is identical and 20-40% of the decoding is saved (single-threaded
    decoders only: with frame threading the setting would reach the wrong frame)."""
    ctx = stream.codec_context
    skip = wanted is not None and not (stream.thread_type & av.codec.context.ThreadType.FRAME)
    try:
        for packet in container.demux(stream):
            if skip:
                ctx.skip_frame = "DEFAULT" if packet.pts in wanted or packet.pts is None else "NONREF"
            try:
                yield from packet.decode()
            except av.InvalidDataError as e:  # a damaged packet costs only its own frame(s)
                log.debug("skipping undecodable packet at %s: %s", packet.pts, e)
    finally:
        if skip:
            ctx.skip_frame = "DEFAULT"


def _decode_exact(container, stream, pr: VideoProbe, positions: np.ndarray, convert) -> dict[int, np.ndarray]:
    """Decode the frames at presentation ``positions`` (sorted, unique), seeking only when
    the next target's keyframe lies beyond what has been decoded."""
    out: dict[int, np.ndarray] = {}
    key_pts = pr.pts[pr.keyframes]
    first_pts = int(pr.pts[0])
    wanted = {int(p) for p in pr.pts[positions]}
    it = None
    last: Optional[int] = None  # pts of the last frame out of the decoder

    def advance(want: int) -> tuple[str, Optional[object]]:
        """Decode until ``want``: ('hit', frame) | ('early', None) if the very first frame is
        already past it | ('miss', None)."""
        nonlocal last
        started = last is None
        for frame in it:
            if frame.pts is None:
                raise _Missed("decoder returns frames without pts")
            overshoot = frame.pts > want
            if overshoot and started:
                return "early", None
            started = False
            last = frame.pts
            if frame.pts == want:
                return "hit", frame
            if overshoot:
                return "miss", None
        return "miss", None

    for pos in positions:
        want = int(pr.pts[pos])
        k = int(np.searchsorted(key_pts, want, side="right")) - 1
        if it is not None and last is not None and last < want and (k < 0 or key_pts[k] <= last):
            status, frame = advance(want)  # same GOP as what we decoded last: keep going
        else:
            status = "early"
        # Seek to the keyframe before the target; where the container's seek lands late
        # (MPEG-TS, sparse WebM cues) step back one keyframe at a time, at worst to the start.
        while status == "early":
            seek_to = int(key_pts[k]) if k >= 0 else min(first_pts, 0)  # 0: before any start time
            container.seek(seek_to, stream=stream, backward=True, any_frame=False)
            it, last = _frames(container, stream, wanted), None
            status, frame = advance(want)
            if status == "early":
                if k < 0:
                    raise _Missed(f"seeking cannot reach frame {pos}")
                k -= 1
        if status != "hit":
            raise _Missed(f"frame {pos} (pts {want}) not produced")
        out[int(pos)] = convert(frame)
    return out


def _decode_keyframes(container, stream, pr: VideoProbe, positions: np.ndarray, convert) -> dict[int, np.ndarray]:
    """Decode only the keyframes at ``positions``.

    For each: seek, feed the decoder that keyframe's packet alone and drain it (the next seek
    flushes it), so no other packet is demuxed into the decoder. A frame is kept only when
    its pts is exactly the wanted one; what imprecise seeking (MPEG-TS...) misses is picked
    up by one sequential keyframe-only pass.
    """
    out: dict[int, np.ndarray] = {}
    position_of = {int(pr.pts[p]): int(p) for p in positions}
    ctx = stream.codec_context
    for pos in positions:
        want = int(pr.pts[pos])
        container.seek(want, stream=stream, backward=True, any_frame=False)
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            if packet.pts == want:
                try:
                    frames = list(packet.decode()) + list(ctx.decode(None))
                except av.FFmpegError:
                    frames = []
                frame = next((f for f in frames if f.pts == want), None)
                if frame is not None:
                    out[int(pos)] = convert(frame)
                break
            if packet.pts > want and packet.is_keyframe:
                break  # the seek landed past it
    if len(out) < len(position_of):
        ctx.skip_frame = "NONKEY"
        try:
            container.seek(min(int(pr.pts[0]), 0), stream=stream, backward=True, any_frame=False)
            for frame in _frames(container, stream):
                if frame.pts in position_of and position_of[frame.pts] not in out:
                    out[position_of[frame.pts]] = convert(frame)
                    if len(out) == len(position_of):
                        break
        finally:
            ctx.skip_frame = "DEFAULT"
    return out


def _decode_sequential(path: Path, positions_of: Callable[[int], np.ndarray], convert
                       ) -> tuple[int, np.ndarray, dict[int, np.ndarray]]:
    """Fallback for damaged or odd files: count the frames that really decode, then decode
    again keeping the targets. Returns (total, pts of decoded frames, images by position)."""
    with _open(path) as c:
        s = _video_stream(c, path)
        decoded_pts = [f.pts if f.pts is not None else i for i, f in enumerate(_frames(c, s))]
    if not decoded_pts:
        raise VideoError(f"{path}: no frame could be decoded (damaged file?)")
    total = len(decoded_pts)
    wanted = set(int(p) for p in positions_of(total))
    out: dict[int, np.ndarray] = {}
    with _open(path) as c:
        s = _video_stream(c, path)
        for i, f in enumerate(_frames(c, s)):
            if i in wanted:
                out[i] = convert(f)
                if len(out) == len(wanted):
                    break
    return total, np.asarray(decoded_pts, dtype=np.int64), out


def sample_video(path: str | Path, n: int, mode: str = "exact", size: Optional[int] = None,
                 video_id: Optional[str] = None, threads: int = 1) -> SampledVideo:
    """Sample ``n`` evenly spaced frames (see module doc); with ``video_id`` also the reference
    study's key frame ``sha256(id) % total_frames``. ``size``: resize the shorter side to
    ``size`` and centre-crop to ``size`` x ``size`` (the encoder's input), else full frames.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {mode!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "SLICE" if threads == 1 else "AUTO"
        stream.thread_count = threads
        pr = probe(container, stream, path)
        convert = make_converter(size, stream)
        targets = target_indices(pr.total_frames, n)
        if mode == "keyframe" and len(pr.keyframes):
            near = np.abs(pr.keyframes[None, :] - targets[:, None]).argmin(axis=1)
            targets = np.unique(pr.keyframes[near])
        key = key_frame_index(video_id, pr.total_frames) if video_id is not None else None
        wanted = np.unique(np.concatenate([targets, [key]] if key is not None else [targets]))
        try:
            if mode == "keyframe" and len(pr.keyframes):
                images = _decode_keyframes(container, stream, pr, targets, convert)
                if key is not None:
                    images.update(_decode_exact(container, stream, pr, np.array([key]), convert))
            else:
                images = _decode_exact(container, stream, pr, wanted, convert)
        except (_Missed, av.FFmpegError) as e:
            log.info("%s: %s; falling back to sequential decoding", path, e)
            images = None
    if mode == "keyframe" and images is not None:
        targets = np.array([p for p in targets if int(p) in images], dtype=np.int64)  # approximate anyway
    if images is None or any(int(p) not in images for p in targets):
        # The packet table and the decoder disagree (damaged or odd file): trust the decoder.
        def positions_of(total: int) -> np.ndarray:
            t = target_indices(total, n)
            return np.unique(np.concatenate([t, [key_frame_index(video_id, total)]])) if video_id else t
        total, pts, images = _decode_sequential(path, positions_of, convert)
        targets = target_indices(total, n)
        key = key_frame_index(video_id, total) if video_id is not None else None
        pr.pts, pr.total_frames = np.sort(pts), total
    if len(targets) == 0 or any(int(p) not in images for p in targets):
        raise VideoError(f"{path}: could not decode the sampled frames (damaged file?)")
    tb_seconds = np.array([pr.seconds(int(pr.pts[p])) for p in targets])
    shown = convert.orientation or UPRIGHT
    width, height = shown.displayed_size(pr.width, pr.height)
    result = SampledVideo(
        total_frames=int(pr.total_frames), duration=pr.duration, width=width, height=height,
        indices=targets.astype(np.int64), timestamps=tb_seconds,
        images=np.stack([images[int(p)] for p in targets]), rotation=shown.rotation, hflip=shown.hflip,
    )
    if key is not None and key in images:
        result.key_frame_index = int(key)
        result.key_frame_time = pr.seconds(int(pr.pts[key]))
        result.key_frame_image = images[key]
    return result


def _videos_under(root: Path) -> list[Path]:
    """Video files under ``root``, following symlinked folders (``rglob`` skips them), each
    real folder once (a link loop ends)."""
    found, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        found += [Path(folder, f) for f in files
                  if Path(f).suffix.lower() in VIDEO_EXTENSIONS and os.path.isfile(os.path.join(folder, f))]
    return found


def find_videos(paths: list[str | Path]) -> list[Path]:
    """Video files among ``paths`` (directories searched recursively), sorted, deduplicated."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += _videos_under(p)
        elif p.exists():
            found.append(p)
        else:
            raise VideoError(f"{p}: no such file or directory")
    return sorted(set(found))


def decode_frames(path: str | Path, indices: Sequence[int], size: Optional[int] = None) -> dict[int, np.ndarray]:
    """RGB frames (as displayed, like ``sample_video``) at the given frame numbers (presentation
    order), e.g. to show search hits.

    Frame numbers past the end are ignored; ``size`` resizes/crops as in ``sample_video``.
    """
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        pr = probe(container, stream, path)
        wanted = np.unique(np.asarray([i for i in indices if 0 <= i < pr.total_frames], dtype=np.int64))
        if len(wanted) == 0:
            return {}
        convert = make_converter(size, stream)
        try:
            return _decode_exact(container, stream, pr, wanted, convert)
        except (_Missed, av.FFmpegError):
            pass
    _, _, images = _decode_sequential(path, lambda total: wanted[wanted < total], convert)
    return images
