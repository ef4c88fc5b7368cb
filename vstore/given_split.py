"""Splits a user already has: ``vstore split STORE --from train.json test.json [val.json]``.

Each file lists the videos of one part, in any of these forms:

* JSON ``[[id, label], ...]`` (the reference study's ``train_config.json`` / ``test_config.json``),
  ``[id, ...]``, ``{id: label}`` or ``{label: [ids]}``;
* CSV/TSV with a header naming an id column (``id``, ``video_id``, ``link`` (a YouTube URL is
  fine), ``video``, ``youtube_id``) and optionally a label column (``category``, ``label``,
  ``class``); without such a header, rows of ``id[,label]``;
* plain text: one id per line (``#`` comments and blank lines skipped).

Ids are read as the labels loader reads them (``labels.id_from_link``): a YouTube URL
(``https://www.youtube.com/watch?v=ID``, ``https://youtu.be/ID``) is its id, in every format.

Labels given as integers (JSON numbers, or text of digits) are class indices when that is
unambiguous: when none of the store's label names is itself an integer, index ``i`` names the
store's ``i``-th label name in sorted order (``Store.label_names``; scikit-learn's
``LabelEncoder`` numbers classes the same way). An index out of range is a disagreement.
When the store has an integer label name, integers are compared as text. If most index labels
disagree, the report says the file's numbering may differ from the store's.

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

Label = Optional[str | int]  # what a file gives: a name, a class index (JSON integer), or None
Entry = tuple[str, Label]  # (video id, label the file gives)


@dataclass
class GivenSplitReport:
    counts: dict[str, int] = field(default_factory=dict)  # part -> videos of the store assigned
    not_in_store: dict[str, list[str]] = field(default_factory=dict)  # part -> ids the store lacks
    label_disagreements: list[tuple[str, str, str]] = field(default_factory=list)  # (id, file's, store's)
    unlabelled_in_store: list[str] = field(default_factory=list)  # listed, but the store has no label
    labelled_unassigned: int = 0  # labelled videos of the store in no list
    index_labels: int = 0  # labels given as integers and read as indices into the store's sorted label names
    index_disagreements: int = 0  # ... of which disagree with the store's label
    label_names: list[str] = field(default_factory=list)  # the store's, in index order

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
        if self.index_labels:
            names = ", ".join(f"{i}={n}" for i, n in enumerate(self.label_names[:8]))
            out.append(f"{self.index_labels} label(s) given as integers were read as indices into the store's "
                       f"sorted label names ({names}{' ...' if len(self.label_names) > 8 else ''})")
            if self.index_disagreements * 2 > self.index_labels:
                out.append(f"{self.index_disagreements} of those {self.index_labels} disagree with the store's labels: "
                           "the file probably numbers its classes differently (compare the names above)")
        if self.unlabelled_in_store:
            u = self.unlabelled_in_store
            out.append(f"{len(u)} listed video(s) have no label in the store (left out): "
                       + ", ".join(u[:limit]) + (" ..." if len(u) > limit else ""))
        if self.labelled_unassigned:
            out.append(f"{self.labelled_unassigned} labelled video(s) of the store are in no list (unused)")
        return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _label(x) -> Label:
    return x if _is_int(x) else str(x)


def _from_json(data, path: Path) -> list[Entry]:
    if isinstance(data, dict):
        values = list(data.values())
        if all(isinstance(v, str) or _is_int(v) for v in values):
            return [(id_from_link(str(k)), _label(v)) for k, v in data.items()]
        if all(isinstance(v, list) for v in values):
            return [(id_from_link(str(v)), str(lab)) for lab, ids in data.items() for v in ids]
    if isinstance(data, list):
        out: list[Entry] = []
        for item in data:
            if isinstance(item, str):
                out.append((id_from_link(item), None))
            elif (isinstance(item, list) and 1 <= len(item) <= 2
                  and all(isinstance(x, str) or _is_int(x) for x in item)):
                out.append((id_from_link(str(item[0])), _label(item[1]) if len(item) == 2 else None))
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
        entries = [(id_from_link(line.strip()), None) for line in text.splitlines()
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
    names = list(store.label_names)
    as_index = not any(n.strip().isdigit() for n in names)  # integers can only be indices: unambiguous
    report = GivenSplitReport(label_names=names)
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
            if given is not None:
                index = given if _is_int(given) else int(given) if given.strip().isdigit() else None
                if index is not None and as_index:
                    report.index_labels += 1
                    name = names[index] if 0 <= index < len(names) else None
                    if name != labels[vid]:
                        report.index_disagreements += 1
                        shown = f"index {index} = {name}" if name else f"index {index}, out of range"
                        report.label_disagreements.append((vid, shown, labels[vid]))
                elif str(given) != labels[vid]:
                    report.label_disagreements.append((vid, str(given), labels[vid]))
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
              "label_disagreements": len(report.label_disagreements),
              "index_labels": report.index_labels}
    config = SplitConfig(test_size=min(max(report.counts["test"] / n, 1e-9), 1 - 1e-9),
                         val_size=report.counts["val"] / n, seed=0)
    return Split(config, store.generation, dict(sorted(assignment.items())), origin=origin), report
