"""Labels files: the dataset CSV (multi-line quoted fields), downloaded.csv, JSON forms."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vstore.errors import LabelsError
from vstore.labels import id_from_link, load_labels

SLICE = Path(__file__).parent / "data" / "youtube_slice.csv"


def test_dataset_slice():
    labels = load_labels(SLICE)
    assert labels.get("JLZlCZ0") == "travel"
    assert labels.names == ["art_music", "food", "history", "travel"]
    assert "kMwMTKh5jfM" in labels.conflicts and labels.get("kMwMTKh5jfM") is None


def test_full_dataset_table(shared_csv):
    labels = load_labels(shared_csv)
    # 3,432 distinct links; '#NAME?' (a spreadsheet artefact) and 8 real ids carry two labels
    assert len(labels) + len(labels.conflicts) == 3432
    assert len(labels.conflicts) == 9 and "#NAME?" in labels.conflicts


def test_downloaded_csv_and_urls(tmp_path):
    p = tmp_path / "downloaded.csv"
    p.write_text("id,category,path,duration,title\nabc,food,videos/abc.mp4,12.5,\"A, title\"\nxyz,,x,1,t\n")
    labels = load_labels(p)
    assert labels.mapping == {"abc": "food"} and labels.skipped_rows[0][1] == "empty label for 'xyz'"
    assert id_from_link("https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=1") == "dQw4w9WgXcQ"
    assert id_from_link("https://youtu.be/dQw4w9WgXcQ") == "dQw4w9WgXcQ"
    assert id_from_link("plainid") == "plainid"


@pytest.mark.parametrize("data, expected", [
    ({"a": "food", "b": "art"}, {"a": "food", "b": "art"}),
    ({"food": ["a", "c"], "art": ["b"]}, {"a": "food", "c": "food", "b": "art"}),
    ({"labels": {"a": "food"}}, {"a": "food"}),
])
def test_json_forms(tmp_path, data, expected):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(data))
    assert load_labels(p).mapping == expected


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("[1, 2]", "expected a JSON object"),
    ('{"a": 1}', "values must be all strings"),
    ("{oops", "invalid JSON"),
    ("name,score\nx,1\n", "needs an id column"),
    ("id,label\n,\n", "no usable"),
])
def test_bad_labels_files(tmp_path, content, message):
    p = tmp_path / ("labels.json" if content.startswith(("{", "[")) else "labels.csv")
    p.write_text(content)
    with pytest.raises(LabelsError, match=message):
        load_labels(p)


def test_missing_file(tmp_path):
    with pytest.raises(LabelsError, match="does not exist"):
        load_labels(tmp_path / "nope.csv")


def test_a_tab_separated_table_reads_the_same_in_labels_and_download(tmp_path):
    """One reader of the dataset table: a TSV saved as .csv is detected by both."""
    from encoders.download.ledger import read_video_table
    path = tmp_path / "export.csv"
    path.write_text("link\ttitle\tdescription\tcategory\n"
                    "https://www.youtube.com/watch?v=abc\tA\t\"two\nlines\"\tfood\n"
                    "def\tB\tx\ttravel\n")
    assert load_labels(path).mapping == {"abc": "food", "def": "travel"}
    table = read_video_table(path)
    assert {v: e.category for v, e in table.entries.items()} == {"abc": "food", "def": "travel"}
