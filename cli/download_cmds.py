"""`vstore download`."""
from __future__ import annotations

import click

from encoders.download import (
    DOWNLOADED_NAME,
    FAILURES_NAME,
    DownloadConfig,
    DownloadSummary,
    download_videos,
)
from encoders.errors import EXIT_SOME_FAILED

from .options import default_of, human_bytes, pass_quiet

COLUMNS = ("found", "downloaded", "present", "permanent", "retryable", "invalid")


def summary_table(summary: DownloadSummary) -> list[str]:
    """Per-category counts, like the reference study's, plus a total row."""
    rows = sorted(summary.categories.items(), key=lambda kv: (kv[0].startswith("("), kv[0]))
    if not rows:
        return []
    rows.append(("total", summary.total))
    width = max(len("category"), *(len(name) for name, _ in rows))
    lines = [f"{'category':<{width}}  " + "  ".join(f"{c:>10}" for c in COLUMNS)]
    for name, counts in rows:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{getattr(counts, c):>10}" for c in COLUMNS))
    return lines


@click.command("download", epilog=f"""\b
Examples:
  vstore download youtube.csv --out videos/ --jobs 4
  vstore download youtube.csv --out videos/ --retry-failed
  vstore download ids.txt --out videos/ --cookies cookies.txt
  vstore build videos/ --store runs/store --labels videos/{DOWNLOADED_NAME}

\b
Files in OUT: <id>.<ext> per video; {DOWNLOADED_NAME} (id, category, path, duration, title),
a labels file for `vstore build --labels` and the record of finished ids; {FAILURES_NAME}
(id, url, kind, reason) with kind permanent, retryable or invalid.

\b
Exit status: 0 when every listed video is in OUT, {EXIT_SOME_FAILED} when some failed or had an
invalid id (listed in OUT/{FAILURES_NAME}), 1 on an error that stopped the run, 130 when
interrupted (rerun to resume).
""")
@click.argument("table", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory the videos go to (created if missing).")
@click.option("--jobs", type=click.IntRange(1, 64), default=default_of(DownloadConfig, "jobs"), show_default=True,
              help="Concurrent downloads. YouTube answers bursts with HTTP 429; keep it small.")
@click.option("--retry-failed", is_flag=True,
              help="Also try again the ids that failed retryably in an earlier run (never permanent ones).")
@click.option("--retries", type=click.IntRange(min=0), default=default_of(DownloadConfig, "retries"), show_default=True,
              help="Extra attempts of a retryable failure (HTTP 429/5xx, timeout, reset), with "
                   "exponential backoff.")
@click.option("--url-template", default=default_of(DownloadConfig, "url_template"), show_default=True,
              help="URL of a video; {id} is replaced by its (validated) id.")
@click.option("--format", "fmt", default=default_of(DownloadConfig, "format"), show_default=True,
              help="yt-dlp format selector. The default: mp4 of at most 360p (the reference study's "
                   "choice), else the best single file.")
@click.option("--cookies", type=click.Path(exists=True, dir_okay=False), default=default_of(DownloadConfig, "cookies"),
              help="Netscape cookies file for yt-dlp, when YouTube asks to confirm you're not a bot. "
                   "It is read, never rewritten.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=default_of(DownloadConfig, "socket_timeout"),
              show_default=True,
              help="Seconds without data before a connection counts as timed out (retryable).")
@click.option("--backoff", type=click.FloatRange(min=0), default=default_of(DownloadConfig, "backoff"), show_default=True,
              help="Seconds before the first retry; doubled for each further one.")
@click.option("--rate-limit-pause", type=click.FloatRange(min=0), default=default_of(DownloadConfig, "rate_limit_pause"),
              show_default=True,
              help="Seconds every download waits after an HTTP 429 (doubled for each further one).")
@pass_quiet
def download_cmd(table, out_dir, jobs, retry_failed, retries, url_template, fmt, cookies, timeout, backoff,
                 rate_limit_pause, quiet):
    """Download the videos of TABLE into OUT, restartably.

    TABLE is the YouTube Videos Dataset CSV (link,title,description,category) or any CSV with
    an id/link column, or a plain list of ids or URLs, one a line. Each video becomes
    OUT/<id>.<ext>. Rerunning skips what is finished, resumes partial files and leaves earlier
    failures alone unless --retry-failed is given.
    """
    config = DownloadConfig(url_template=url_template, format=fmt, jobs=jobs, retries=retries, backoff=backoff,
                            max_backoff=max(default_of(DownloadConfig, "max_backoff"), backoff),
                            rate_limit_pause=rate_limit_pause,
                            socket_timeout=timeout, cookies=cookies, retry_failed=retry_failed)
    s = download_videos(table, out_dir, config, progress=not quiet)
    for line in summary_table(s):
        click.echo(line)
    t = s.total
    rate = s.bytes / s.seconds if s.seconds else 0.0
    click.echo(f"downloaded {t.downloaded}, already present {t.present}, failed {t.permanent + t.retryable} "
               f"({t.permanent} permanent, {t.retryable} retryable), invalid ids {t.invalid} - "
               f"{human_bytes(s.bytes)} in {s.seconds:.1f} s ({human_bytes(rate)}/s)")
    if s.duplicate_rows:
        click.echo(f"{s.duplicate_rows} duplicate row(s) in {table} ignored", err=True)
    if s.ambiguous:
        some = ", ".join(s.ambiguous[:5]) + (" ..." if len(s.ambiguous) > 5 else "")
        click.echo(f"{len(s.ambiguous)} id(s) listed under several categories have no category in "
                   f"{DOWNLOADED_NAME}: {some}", err=True)
    if s.rate_limited:
        click.echo(f"the server answered 'too many requests' {s.rate_limited} time(s); try fewer --jobs "
                   f"or --cookies", err=True)
    if retry_failed and s.earlier_permanent:
        click.echo(f"left alone {s.earlier_permanent} permanent failure(s) of earlier runs", err=True)
    if s.earlier_retryable:
        click.echo(f"{s.earlier_retryable} retryable failure(s) of earlier runs not retried; "
                   f"add --retry-failed to try them again", err=True)
    elif t.retryable:
        click.echo(f"{t.retryable} retryable failure(s): rerun with --retry-failed to try them again", err=True)
    if t.downloaded + t.present:
        click.echo(f"labels: {s.labels_path}  (vstore build {out_dir} --store STORE --labels {s.labels_path})")
    if s.failed:
        click.echo(f"{s.failed} video(s) not downloaded; reasons in {s.out_dir / FAILURES_NAME}", err=True)
        raise SystemExit(s.exit_code)


COMMANDS = [download_cmd]
