"""``vstore download``: fetch a dataset table's videos with yt-dlp, resumable, failures classified.

``fetch`` runs the downloads; ``ledger`` keeps the books (the input table, ``downloaded.csv``,
``failures.csv``) and checks the files that arrive.
"""
from .fetch import (
                    DEFAULT_FORMAT,
                    DEFAULT_URL_TEMPLATE,
                    DownloadBusyError,
                    DownloadConfig,
                    RateGate,
                    classify_error,
                    download_videos,
)
from .ledger import (
                    DOWNLOADED_NAME,
                    FAILURES_NAME,
                    BadDownload,
                    DownloadSummary,
                    VideoTableError,
                    probe_download,
                    read_video_table,
)

__all__ = [
    "DEFAULT_FORMAT", "DEFAULT_URL_TEMPLATE", "DownloadBusyError", "DownloadConfig", "RateGate", "classify_error",
    "download_videos", "DOWNLOADED_NAME", "FAILURES_NAME", "BadDownload", "DownloadSummary", "VideoTableError",
    "probe_download", "read_video_table",
]
