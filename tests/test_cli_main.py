"""The `vstore` group itself: log levels per invocation."""
from __future__ import annotations

import logging

from cli.main import PACKAGES, main


def _build(runner, videos, store, *flags):
    return runner.invoke(main, [*flags, "build", str(videos), "--store", str(store), "--encoder", "thumbnail",
                                "--frames", "2", "--workers", "0", "--no-compact"])


def test_verbose_reaches_the_build_loggers_and_does_not_stick(class_videos, tmp_path, runner):
    videos, _ = class_videos
    r = _build(runner, videos, tmp_path / "s", "-v")
    assert r.exit_code == 0, r.output
    assert "INFO encoders.build.pipeline: 16 videos found" in r.output  # the build's own logger
    assert all(logging.getLogger(p).getEffectiveLevel() == logging.INFO for p in PACKAGES)
    r = _build(runner, videos, tmp_path / "s", "-vv")
    assert r.exit_code == 0 and logging.getLogger("encoders.build.pipeline").getEffectiveLevel() == logging.DEBUG
    r = _build(runner, videos, tmp_path / "s")  # the next call in this process: back to warnings only
    assert r.exit_code == 0, r.output
    assert "INFO" not in r.output and "DEBUG" not in r.output
    assert all(logging.getLogger(p).getEffectiveLevel() == logging.WARNING for p in PACKAGES)
    r = _build(runner, videos, tmp_path / "s", "-q")
    assert r.exit_code == 0 and "INFO" not in r.output


def test_warnings_still_reach_caplog(class_videos, tmp_path, runner, caplog):
    videos, _ = class_videos
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "broken.mp4").write_bytes(b"not a video")
    with caplog.at_level(logging.WARNING):
        r = runner.invoke(main, ["build", str(tmp_path / "v"), "--store", str(tmp_path / "s"), "--encoder",
                                 "thumbnail", "--workers", "0"])
    assert r.exit_code == 3
    assert any(rec.name == "encoders.build.pipeline" and "broken.mp4" in rec.getMessage() for rec in caplog.records)
