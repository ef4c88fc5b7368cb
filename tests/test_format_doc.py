"""docs/FORMAT.md promises that a segment can be read with plain h5py from that page: run its
example against a real store, and check its checksum recipe against the stored checksums."""
import contextlib
import io
import re
from pathlib import Path

import h5py
import numpy as np

from vstore import Store

DOC = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"


def doc_example() -> str:
    text = DOC.read_text()
    section = text[text.index("### Reading a segment with plain h5py"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_plain_h5py_example_reads_a_real_segment(thumb_store):
    segment = sorted((thumb_store / "segments").glob("*.h5"))[0]
    code = doc_example().replace("runs/store/segments/00000001-1a2b3c4d.h5", str(segment))
    assert str(segment) in code, "the example's path changed: update this test"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(DOC), "exec"), {})
    first_id = out.getvalue().split()[0]
    with Store.open(thumb_store) as s:
        assert first_id == s.videos.ids[0]
        with h5py.File(segment, "r") as f:
            n = int(f["videos/n_frames"][0])
            np.testing.assert_array_equal(f["frames/embedding"][:n], s.get_embeddings(first_id))


def test_the_documented_checksum_recipe_matches_the_stored_checksums(thumb_store):
    segment = sorted((thumb_store / "segments").glob("*.h5"))[0]
    with h5py.File(segment, "r") as f:
        emb = f["frames/embedding"][()]
        stored = f["frames/embedding_checksum"][()]
        chunk = f["frames/embedding"].chunks[0]  # chunk_rows
    assert len(stored) == -(-len(emb) // chunk) >= 1
    assert emb.shape[1] * emb.itemsize % 8 == 0, "the recipe in FORMAT.md assumes 8-byte-multiple rows"
    for i, want in enumerate(stored):
        block = emb[i * chunk:(i + 1) * chunk]
        got = block.view(np.uint8).reshape(len(block), -1).view("<u8").sum(dtype=np.uint64)
        assert got == want, (i, got, want)
