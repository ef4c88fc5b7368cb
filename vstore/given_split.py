"""Splits a user already has: ``vstore split STORE --from train.json test.json [val.json]``.

Each file lists the videos of one part, in any of these forms:

* JSON ``[[id, label], ...]`` (the reference study's ``train_config.json`` / ``test_config.json``),
  ``[id, ...]``, ``{id: label}`` or ``{label: [ids]}``;
* CSV/TSV with a header naming an id column (``id``, ``video_id``, ``link`` (a YouTube URL is
  fine), ``video``, ``youtube_id``) and optionally a label column (``category``, ``label``,
  ``class``); without such a header, rows of ``id[,label]``;
* plain text: one id per line (``#`` comments and blank lines skipped).

The store's labels are the ones training uses: a label a file gives that disagrees with the
store's is reported, never applied. Ids that are not in the store, and ids listed in two
parts, are reported; an id listed in two parts is an error (it would leak test videos into
training). The origin (file names, their SHA-256, the counts) is recorded in ``split.json``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import SplitError
from .labels import ID_COLUMNS, LABEL_COLUMNS, cell, column, id_from_link, read_list_file, table_rows
from .split import SPLIT_NAMES, Split, SplitConfig
from .store import Store

Entry = tuple[str, Optional[str]]  # (video id, label the file gives or None)


@dataclass
class GivenSplitReport:
    counts: dict[str, int] = field(default_factory=dict)  # part -> videos of the store assigned
    not_in_store: dict[str, list[str]] = field(default_factory=dict)  # part -> ids the store lacks
    label_disagreements: list[tuple[str, str, str]] = field(default_factory=list)  # (id, file's, store's)
    unlabelled_in_store: list[str] = field(default_factory=list)  # listed, but the store has no label
    labelled_unassigned: int = 0  # labelled videos of the store in no list

    def lines(self, limit: int = 5) -> list[str]:
        out = []
        for part, ids in self.not_in_store.items():
            if ids:
                out.append(f"{len(ids)} {part} id(s) are not in the store (ignored): "
                           + ", ".join(ids[:limit]) + (" ..." if len(ids) > limit else ""))
        if self.label_disagreements:
            d = self.label_disagreements
            out.append(f"{len(d)} label(s) disagree with the store's (the store's are used): "
                       + ", ".join(f"{v} ({a} vs {b})" for v, a, b in d[:limit]) + (" ..." if len(d) > limit else ""))
        if self.unlabelled_in_store:
            u = self.unlabelled_in_store
            out.append(f"{len(u)} listed video(s) have no label in the store (left out): "
                       + ", ".join(u[:limit]) + (" ..." if len(u) > limit else ""))
        if self.labelled_unassigned:
            out.append(f"{self.labelled_unassigned} labelled video(s) of the store are in no list (unused)")
        return out


def _from_json(data, path: Path) -> list[Entry]:
    if isinstance(data, dict):
        values = list(data.values())
        if all(isinstance(v, str) for v in values):
            return [(str(k), v) for k, v in data.items()]
        if all(isinstance(v, list) for v in values):
            return [(str(v), str(lab)) for lab, ids in data.items() for v in ids]
    if isinstance(data, list):
        out: list[Entry] = []
        for item in data:
            if isinstance(item, str):
                out.append((item, None))
            elif isinstance(item, list) and 1 <= len(item) <= 2 and all(isinstance(x, (str, int)) for x in item):
                out.append((str(item[0]), str(item[1]) if len(item) == 2 else None))
            else:
                raise SplitError(f"{path}: entries must be ids or [id, label] pairs, got {str(item)[:60]!r}")
        return out
    raise SplitError(f"{path}: expected [[id, label], ...], [id, ...], {{id: label}} or {{label: [ids]}}")


def _from_csv(text: str, path: Path) -> list[Entry]:
    """A table read as the labels loader reads one (``labels.table_rows``); without an id column
    in its first record, every record is ``id[,label]``."""
    header, records = table_rows(text, path, SplitError)
    id_col = column(header, ID_COLUMNS)
    if id_col is not None:
        label_col = column(header, LABEL_COLUMNS)
    else:
        _, records = table_rows(text, path, SplitError, has_header=False)
        id_col, label_col = 0, 1
    out: list[Entry] = []
    for _line, row in records:
        vid = cell(row, id_col).strip()
        if vid:
            out.append((id_from_link(vid), cell(row, label_col).strip() or None))
    return out


def read_id_list(path: str | Path) -> list[Entry]:
    """``(id, label or None)`` of every entry of one list file (see module doc)."""
    path = Path(path)
    text, data = read_list_file(path, "split list", SplitError)
    stripped = text.lstrip()
    if data is not None:
        entries = _from_json(data, path)
    elif path.suffix.lower() in (".csv", ".tsv") or "," in stripped.split("\n", 1)[0]:
        entries = _from_csv(text, path)
    else:
        entries = [(line.strip(), None) for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    entries = [(v.strip(), lab) for v, lab in entries if v.strip()]
    if not entries:
        raise SplitError(f"split list {path} lists no ids")
    return entries


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_from_lists(store: Store, lists: dict[str, str | Path]) -> tuple[Split, GivenSplitReport]:
    """A split of ``store`` from list files per part (``train`` and ``test`` required, ``val``
    optional); raises ``SplitError`` when a part ends up empty or an id is in two parts."""
    if "train" not in lists or "test" not in lists or set(lists) - set(SPLIT_NAMES):
        raise SplitError("--from needs a train list and a test list (and optionally a val list)")
    labels = dict(zip(store.videos.ids, store.videos.labels))
    report = GivenSplitReport()
    assignment: dict[str, str] = {}
    where: dict[str, str] = {}
    for part in ("train", "val", "test"):
        if part not in lists:
            continue
        report.not_in_store[part] = []
        for vid, given in read_id_list(lists[part]):
            if vid in where and where[vid] != part:
                raise SplitError(f"{vid} is listed in both the {where[vid]} list and the {part} list; "
                                 "a test video must not be trained on")
            where[vid] = part
            if vid not in labels:
                report.not_in_store[part].append(vid)
                continue
            if not labels[vid]:
                report.unlabelled_in_store.append(vid)
                continue
            if given is not None and given != labels[vid]:
                report.label_disagreements.append((vid, given, labels[vid]))
            assignment[vid] = part
    report.counts = {p: sum(1 for s in assignment.values() if s == p) for p in SPLIT_NAMES}
    report.labelled_unassigned = sum(1 for v, lab in labels.items() if lab and v not in assignment)
    for part in ("train", "test"):
        if not report.counts[part]:
            raise SplitError(f"none of the ids of {lists[part]} is a labelled video of {store.path}; "
                             "check that the list uses the store's ids (file stems)")
    n = len(assignment)
    origin = {"kind": "given",
              "files": {p: {"path": str(Path(f).resolve()), "sha256": _sha256(Path(f))} for p, f in lists.items()},
              "not_in_store": {p: len(v) for p, v in report.not_in_store.items()},
              "label_disagreements": len(report.label_disagreements)}
    config = SplitConfig(test_size=min(max(report.counts["test"] / n, 1e-9), 1 - 1e-9),
                         val_size=report.counts["val"] / n, seed=0)
    return Split(config, store.generation, dict(sorted(assignment.items())), origin=origin), report
