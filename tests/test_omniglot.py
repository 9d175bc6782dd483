"""Tests for the Omniglot loaders (npz, official zip, TFDS) and splits, on the real data."""

from __future__ import annotations

import csv
import importlib.util
import io
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mamlx.tasks import omniglot as og

from conftest import data_dir

SMALL = "images_background_small1.zip"


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def full(cache_root):
    """All 1623 characters from the npz arrays, loaded once per module (timed)."""
    start = time.perf_counter()
    chars = og.load_omniglot_npz(data_dir("omniglot"), cache_dir=cache_root)
    took = time.perf_counter() - start
    print(f"\nfull Omniglot npz load + preprocess + cache write: {took:.2f}s")
    return chars


@pytest.fixture(scope="module")
def small(cache_root):
    return og.load_omniglot_zip([data_dir("omniglot") / SMALL], cache_dir=cache_root)


def test_alphabet_table_matches_alphabets_tsv(omniglot_dir):
    with open(omniglot_dir / "alphabets.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    assert [(s, a, int(i), int(j)) for s, a, i, j in rows] == list(og.OMNIGLOT_ALPHABETS)
    ids = [i for _, _, f, last in og.OMNIGLOT_ALPHABETS for i in range(f, last + 1)]
    assert ids == list(range(1, 1624))


def test_full_npz_shapes_and_values(full):
    assert full.images.shape == (1623, 20, 28, 28, 1) and full.images.dtype == np.float32
    np.testing.assert_array_equal(full.char_ids, np.arange(1, 1624))
    assert full.images.min() == 0.0 and full.images.max() == 1.0
    # Strokes are 1.0 on a 0.0 background: ink covers a minority of pixels.
    assert 0.02 < full.images.mean() < 0.3
    assert full.images[:, :, 0, :].mean() < full.images[:, :, 14, :].mean()


def test_preprocessing_equals_pil_lanczos(omniglot_dir, full):
    with np.load(omniglot_dir / "images_evaluation.npz") as z:
        raw = z["images"][[0, 300, 658]]
    for row, chars in zip((964, 1264, 1622), raw, strict=True):
        for d in (0, 7, 19):
            img = Image.fromarray(1.0 - chars[d].astype(np.float32), mode="F")
            want = np.clip(np.asarray(img.resize((28, 28), Image.Resampling.LANCZOS)), 0, 1)
            np.testing.assert_allclose(full.images[row, d, :, :, 0], want, atol=1e-5)


def test_nearest_resize_is_what_maml_script_made_of_the_official_pngs(omniglot_dir, cache_root):
    # MAML's resize_images.py: Image.open(png).resize((28, 28), resample=Image.LANCZOS) on
    # the official 1-bit PNGs, then 1 - x / 255 when read. PIL resizes mode "1" nearest-
    # neighbour whatever filter is asked, so the inputs are binary.
    nearest = og.load_omniglot_zip([omniglot_dir / SMALL], resize="nearest", cache_dir=cache_root)
    assert set(np.unique(nearest.images).tolist()) == {0.0, 1.0}
    with zipfile.ZipFile(omniglot_dir / SMALL) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        for name in names[:: len(names) // 12][:12]:
            img = Image.open(io.BytesIO(zf.read(name)))
            assert img.mode == "1" and img.size == (105, 105)
            maml = (
                1.0
                - np.asarray(
                    img.resize((28, 28), resample=Image.Resampling.LANCZOS).convert("L"), np.float32
                )
                / 255.0
            )
            char, drawer = (int(v) for v in name.rsplit("/", 1)[1][:-4].split("_"))
            row = int(np.searchsorted(nearest.char_ids, char))
            assert nearest.char_ids[row] == char
            np.testing.assert_array_equal(nearest.images[row, drawer - 1, :, :, 0], maml)
    # The Lanczos default is another cache entry with gray edges, not a stale hit.
    lanczos = og.load_omniglot_zip([omniglot_dir / SMALL], cache_dir=cache_root)
    assert len(np.unique(lanczos.images)) > 100
    assert 0.0 < np.abs(lanczos.images - nearest.images).mean() < 0.1
    # Bad filter or size: a clear error before any archive is read or hashed.
    for kw, message in (
        ({"resize": "bilinear"}, "unknown resize filter 'bilinear'"),
        ({"size": 0}, r"size \(output side length\) must be an integer >= 1"),
        ({"size": True}, r"size \(output side length\) must be an integer >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            og.load_omniglot_zip(["/no/such/archive.zip"], **kw)


def test_npz_and_official_zip_agree(full, small):
    # The small archive is a subset of the background set: 5 alphabets, 136 characters.
    assert small.images.shape == (136, 20, 28, 28, 1)
    assert set(small.char_ids) <= set(full.char_ids) and small.char_ids.max() <= 964
    assert set(range(108, 132)) <= set(small.char_ids.tolist())  # Balinese
    rows = np.searchsorted(full.char_ids, small.char_ids)
    np.testing.assert_array_equal(full.images[rows], small.images)


def test_cache_is_reused_and_untrusted_cache_rebuilt(full, cache_root, omniglot_dir, monkeypatch):
    def no_rebuild(*args, **kwargs):
        raise AssertionError("cache miss: preprocessing ran again")

    with monkeypatch.context() as m:
        m.setattr(og, "preprocess_omniglot", no_rebuild)
        again = og.load_omniglot_npz(omniglot_dir, cache_dir=cache_root)
    np.testing.assert_array_equal(again.images, full.images)
    np.testing.assert_array_equal(again.char_ids, full.char_ids)
    # Another size is another cache entry; a truncated cache file (an interrupted
    # writer without the atomic rename) is not trusted but rebuilt.
    small_cache = cache_root / "small"
    zip_path = omniglot_dir / SMALL
    first = og.load_omniglot_zip([zip_path], size=14, cache_dir=small_cache)
    assert first.images.shape == (136, 20, 14, 14, 1)
    (entry,) = (small_cache / "omniglot").glob("processed-*.npz")
    entry.write_bytes(entry.read_bytes()[:1000])
    rebuilt = og.load_omniglot_zip([zip_path], size=14, cache_dir=small_cache)
    np.testing.assert_array_equal(rebuilt.images, first.images)
    assert og.load_npz(entry, "anything") is None and entry.stat().st_size > 1000


def test_corrupt_npz_files_give_clear_errors(tmp_path, omniglot_dir):
    good = (omniglot_dir / "images_background.npz").read_bytes()
    cases = {
        "empty": (lambda p: p.write_bytes(b""), "corrupt or not an npz archive: .*empty"),
        "npy": (lambda p: np.save(p.open("wb"), np.zeros((2, 3), bool)), "holds a single .npy"),
        "truncated": (lambda p: p.write_bytes(good[:100_000]), "corrupt or not an npz archive"),
        "text": (lambda p: p.write_bytes(b"hello world" * 10), "corrupt or not an npz archive"),
        "no_images": (lambda p: np.savez(p, labels=np.zeros(3)), "no 'images' array"),
    }
    for name, (make, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        make(folder / "images_background.npz")
        with pytest.raises(ValueError, match=message) as err:
            og.load_omniglot_npz(folder, sets=("background",), cache_dir=tmp_path / "c")
        assert str(folder / "images_background.npz") in str(err.value)
    assert not [p for p in (tmp_path / "c").rglob("*") if p.is_file()]  # no cache written


def test_npz_empty_sets_rejected(omniglot_dir):
    for sets in ((), [], "background"):
        with pytest.raises(ValueError, match="non-empty sequence of 'background'"):
            og.load_omniglot_npz(omniglot_dir, sets=sets, cache=False)


def test_preprocess_accepts_0_1_numbers_and_rejects_other_values(omniglot_dir):
    with np.load(omniglot_dir / "images_background.npz") as z:
        raw = z["images"][:2, :3]
    want = og.preprocess_omniglot(raw)
    for dtype in (np.uint8, np.int64, np.float32, np.float64):
        np.testing.assert_array_equal(og.preprocess_omniglot(raw.astype(dtype)), want)
    gray = raw.astype(np.uint8) * 255  # np.asarray of an "L" PNG
    with pytest.raises(ValueError, match=r"dtype uint8 with values \{255\}.*gray >= 128"):
        og.preprocess_omniglot(gray)
    nan = raw.astype(np.float32)
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="dtype float32 with 1 NaN values"):
        og.preprocess_omniglot(nan)
    nan[1, 2, 3, 4] = 0.5
    with pytest.raises(ValueError, match=r"1 NaN values and values \{0.5\}"):
        og.preprocess_omniglot(nan)
    with pytest.raises(ValueError, match="got dtype <U1"):
        og.preprocess_omniglot(np.full(raw.shape, "a"))


def _write_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, img in members.items():
            buf = io.BytesIO()
            Image.fromarray(img).convert("1").save(buf, format="PNG")
            zf.writestr(name, buf.getvalue())
    return path


def _character(alphabet="Balinese", num=1, cid=108, size=105, drawers=range(1, 21)):
    img = np.full((size, size), 255, np.uint8)
    img[40:60, 50] = 0
    return {f"root/{alphabet}/character{num:02d}/{cid:04d}_{d:02d}.png": img for d in drawers}


def test_zip_errors(tmp_path, omniglot_dir):
    good = omniglot_dir / SMALL
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a valid Omniglot zip"):
        og.load_omniglot_zip([truncated], cache=False)
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"this is not a zip" * 1000)
    with pytest.raises(ValueError, match="not a valid Omniglot zip"):
        og.load_omniglot_zip([garbage], cache=False)
    with pytest.raises(FileNotFoundError, match="brendenlake/omniglot"):
        og.load_omniglot_zip([tmp_path / "images_background.zip"], cache=False)
    wrong_size = _write_zip(tmp_path / "size.zip", _character(size=64))
    with pytest.raises(ValueError, match="is 64x64, expected 105x105"):
        og.load_omniglot_zip([wrong_size], cache=False)
    few = _write_zip(tmp_path / "few.zip", _character(drawers=range(1, 20)))
    with pytest.raises(ValueError, match="character 108 has drawers"):
        og.load_omniglot_zip([few], cache=False)
    renumbered = _write_zip(tmp_path / "num.zip", _character(cid=109))
    with pytest.raises(ValueError, match="official numbering"):
        og.load_omniglot_zip([renumbered], cache=False)
    one = _write_zip(tmp_path / "one.zip", _character())
    chars = og.load_omniglot_zip([one], cache=False)
    assert chars.char_ids.tolist() == [108] and chars.images.shape == (1, 20, 28, 28, 1)


def test_fetch_archive_via_file_url(tmp_path, omniglot_dir, small):
    src = omniglot_dir / SMALL
    got = og.fetch_omniglot_archive(SMALL, url=src.as_uri(), dest_dir=tmp_path / "dl")
    assert got == tmp_path / "dl" / SMALL
    assert og.sha256_file(got) == og.OMNIGLOT_ARCHIVES[SMALL][1]  # the table's checksum
    chars = og.load_omniglot_zip([got], cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(chars.images, small.images)

    corrupt = tmp_path / "corrupt.zip"
    data = bytearray(src.read_bytes())
    data[5000] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        og.fetch_omniglot_archive(SMALL, url=corrupt.as_uri(), dest_dir=tmp_path / "bad")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(bytes(data[:100_000]))
    with pytest.raises(ValueError, match="truncated"):
        og.fetch_omniglot_archive(SMALL, url=truncated.as_uri(), dest_dir=tmp_path / "bad")
    assert not any((tmp_path / "bad").iterdir())
    # A user-supplied checksum overrides the table (e.g. a private mirror).
    sha = og.sha256_file(corrupt)
    got = og.fetch_omniglot_archive(
        SMALL, url=corrupt.as_uri(), sha256=sha, dest_dir=tmp_path / "mirror"
    )
    assert got.read_bytes() == bytes(data)
    with pytest.raises(ValueError, match="unknown Omniglot archive"):
        og.fetch_omniglot_archive("images_other.zip")


def test_archive_table_matches_tfds_registered_checksums():
    """URL, size and SHA-256 of every official archive agree with TFDS's own registry.

    The full archives cannot be fetched here, so their table rows are checked against
    an independent record of the same files: the checksums TFDS ships for its Omniglot
    builder (read as a file, without importing TensorFlow).
    """
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None:
        pytest.skip("tensorflow-datasets not installed (the test extra installs it)")
    registry = Path(spec.submodule_search_locations[0]) / "url_checksums" / "omniglot.txt"
    rows = {}
    for line in registry.read_text().splitlines():
        if line.strip():
            url, size, sha, *_ = line.split()
            rows[url.rsplit("/", 1)[1]] = (url, sha, int(size))
    assert rows == og.OMNIGLOT_ARCHIVES


def test_load_omniglot_dispatch_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        og.load_omniglot("zip", tmp_path, download=False, cache=False)
    with pytest.raises(FileNotFoundError, match="needs root="):
        og.load_omniglot("npz")
    with pytest.raises(FileNotFoundError, match="images_background.npz not found"):
        og.load_omniglot("npz", tmp_path)
    with pytest.raises(ValueError, match="unknown Omniglot source"):
        og.load_omniglot("hdf5", tmp_path)


def test_load_omniglot_zip_source_from_local_archives(tmp_path, omniglot_dir, small):
    # Stand-ins for the two official archives: small1 and a one-character evaluation zip.
    shutil.copy(omniglot_dir / SMALL, tmp_path / "images_background.zip")
    _write_zip(tmp_path / "images_evaluation.zip", _character("Angelic", 1, 965))
    chars = og.load_omniglot("zip", tmp_path, cache_dir=tmp_path / "cache")
    assert chars.char_ids.tolist() == small.char_ids.tolist() + [965]


def test_vinyals_split(full):
    split = og.omniglot_split(full, "vinyals", seed=0)
    assert split.name == "vinyals" and split.seed == 0 and split.train_rotations == 4
    sizes = (len(split.train_ids), len(split.val_ids), len(split.test_ids))
    assert sizes == (1100, 100, 423)
    assert split.num_train_classes == 4400
    ids = np.concatenate([split.train_ids, split.val_ids, split.test_ids])
    assert sorted(ids.tolist()) == list(range(1, 1624))  # disjoint and complete
    for arr, part in ((split.train, split.train_ids), (split.test, split.test_ids)):
        assert arr.shape == (len(part), 20, 28, 28, 1)
        np.testing.assert_array_equal(arr, full.images[part - 1])
    no_val = og.omniglot_split(full, "vinyals", seed=0, num_val=0)
    assert len(no_val.train_ids) == 1200 and no_val.num_train_classes == 4800
    assert len(no_val.test_ids) == 423 and no_val.val.shape[0] == 0
    # The 1200 characters do not depend on the val carve-out; the seed decides them.
    np.testing.assert_array_equal(
        np.sort(np.concatenate([split.train_ids, split.val_ids])), no_val.train_ids
    )
    same = og.omniglot_split(full, "vinyals", seed=0)
    np.testing.assert_array_equal(same.train_ids, split.train_ids)
    other = og.omniglot_split(full, "vinyals", seed=1)
    assert not np.array_equal(other.train_ids, split.train_ids)


def test_background_split(full):
    split = og.omniglot_split(full, "background")
    assert (len(split.train_ids), len(split.val_ids), len(split.test_ids)) == (964, 0, 659)
    np.testing.assert_array_equal(split.train_ids, np.arange(1, 965))
    np.testing.assert_array_equal(split.test_ids, np.arange(965, 1624))
    assert split.train_rotations == 1 and split.test.shape == (659, 20, 28, 28, 1)
    carved = og.omniglot_split(full, "background", seed=3, num_val=3)
    assert len(carved.train_ids) + len(carved.val_ids) == 964
    assert not set(carved.train_ids) & set(carved.val_ids)
    alphabets = {a for _, a, f, last in og.OMNIGLOT_ALPHABETS if f <= carved.val_ids[0] <= last}
    (alpha,) = alphabets
    whole = set(range(og._FIRST_ID[alpha], og._LAST_ID[alpha] + 1))
    assert whole <= set(carved.val_ids.tolist())  # whole alphabets go to val


def test_split_errors(full, small):
    with pytest.raises(ValueError, match="needs .* characters not in the loaded data"):
        og.omniglot_split(small, "vinyals")
    with pytest.raises(ValueError, match="unknown Omniglot split"):
        og.omniglot_split(full, "random")
    with pytest.raises(ValueError, match="num_val"):
        og.omniglot_split(full, "vinyals", num_val=1200)


def test_core_imports_without_tfds():
    code = (
        "import sys; import mamlx.tasks; "
        "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tfds_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"mamlx\[tfds\]"):
        og.load_omniglot_tfds(cache=False)


def test_tfds_path_matches_npz_with_mock_data(omniglot_dir, full, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    picks = {"train": [0, 107, 963], "test": [0, 658]}  # npz rows per tfds split
    raw = {}
    for split, name in (("train", "background"), ("test", "evaluation")):
        with np.load(omniglot_dir / f"images_{name}.npz") as z:
            raw[split] = z["images"][picks[split]]
    offset = {"train": 0, "test": 964}

    def as_data_source(self, split, **kwargs):
        examples = [
            {
                "image": np.repeat(raw[split][i, d, :, :, None].astype(np.uint8) * 255, 3, -1),
                "label": np.int64(offset[split] + row),
                "alphabet": np.int64(0),
                "alphabet_char_id": np.int64(0),
            }
            for d in range(20)
            for i, row in enumerate(picks[split])
        ]  # drawer-major: characters interleaved, as a shuffled data source would be
        return examples

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        chars = og.load_omniglot_tfds(cache_dir=tmp_path)
    want_ids = [r + 1 for r in picks["train"]] + [r + 965 for r in picks["test"]]
    assert chars.char_ids.tolist() == want_ids
    np.testing.assert_array_equal(chars.images, full.images[np.array(want_ids) - 1])


def test_tfds_random_mock_data_gives_clear_error(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        src = tfds.data_source("omniglot", split="train")
        assert src[0]["image"].shape == (105, 105, 3)
        with pytest.raises(ValueError, match="has 1 images, expected 20"):
            og.load_omniglot_tfds(splits=("train",), cache_dir=tmp_path)
