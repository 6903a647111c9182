"""Data sources on tiny generated files: npz, IDX (gzipped or not), ImageFolder, builtins, and their errors."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from hadmc_deploy.data import Preprocess, check_matches_model, load_data, read_idx
from hadmc_deploy.errors import DataError


def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 6, 6)), gz=True)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 3, (n,)), gz=False)
    return tmp_path


def test_idx_dir_splits_and_normalisation(idx_dir):
    train = load_data(f"{idx_dir}:train")
    test = load_data(f"{idx_dir}:test")
    assert train.x.shape == (12, 1, 6, 6) and test.x.shape == (5, 1, 6, 6)
    raw = read_idx(idx_dir / "train-images-idx3-ubyte.gz")
    np.testing.assert_allclose(train.x[:, 0], (raw / 255.0 - 0.5) / 0.5, atol=1e-6)
    assert train.y.dtype == np.int64


def test_idx_dir_without_split_is_ambiguous(idx_dir):
    with pytest.raises(DataError, match=":train or"):
        load_data(str(idx_dir))


def test_truncated_idx(tmp_path):
    path = tmp_path / "x-images-idx3-ubyte"
    _write_idx(path, np.zeros((4, 5, 5)), gz=False)
    path.write_bytes(path.read_bytes()[:-10])
    (tmp_path / "x-labels-idx1-ubyte").write_bytes(b"")
    with pytest.raises(DataError, match="truncated"):
        load_data(str(path))


def test_npz_uint8_and_float(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (7, 3, 4, 4)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(7) % 2)
    ds = load_data(str(tmp_path / "d.npz"), Preprocess(mean=(0.0,), std=(1.0,)))
    np.testing.assert_allclose(ds.x, x / 255.0, rtol=1e-6)
    np.savez(tmp_path / "f.npz", x=(x / 255.0).astype(np.float32), y=np.arange(7) % 2)
    ds2 = load_data(str(tmp_path / "f.npz"), Preprocess(mean=(0.0,), std=(1.0,)))
    np.testing.assert_allclose(ds2.x, ds.x, rtol=1e-6)


def test_npz_channels_last_is_read_as_channels_first(tmp_path):
    """Keras/TensorFlow arrays are N,H,W,C: they load as the same images in N,C,H,W (they were read
    as 32-channel images and refused); an N,C,H,W array whose width is also a channel count stays."""
    nchw = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 30)).astype(np.uint8)
    np.savez(tmp_path / "nhwc.npz", x=nchw.transpose(0, 2, 3, 1), y=np.arange(5) % 2)
    ds = load_data(str(tmp_path / "nhwc.npz"), Preprocess(mean=(0.0,), std=(1.0,), channels=3))
    np.testing.assert_allclose(ds.x, nchw / 255.0, rtol=1e-6)
    narrow = np.random.default_rng(1).integers(0, 256, (2, 3, 8, 3)).astype(np.uint8)
    np.savez(tmp_path / "narrow.npz", x=narrow, y=np.zeros(2, np.int64))
    assert load_data(str(tmp_path / "narrow.npz"), Preprocess(mean=(0.0,), std=(1.0,))).x.shape == (2, 3, 8, 3)


def test_npz_one_hot_and_column_labels_are_class_indices(tmp_path):
    """Keras-style labels, one-hot rows or an (N, 1) column, load as class indices; soft labels
    (rows that are not one-hot) are refused with the shapes that work."""
    x = np.zeros((4, 1, 8, 8), np.uint8)
    labels = np.array([2, 0, 1, 2])
    np.savez(tmp_path / "onehot.npz", x=x, y=np.eye(3, dtype=np.float32)[labels])
    np.testing.assert_array_equal(load_data(str(tmp_path / "onehot.npz")).y, labels)
    from hadmc_deploy.data import source_labels  # the build's early class check reads them the same way

    np.testing.assert_array_equal(source_labels(str(tmp_path / "onehot.npz")), labels)
    np.savez(tmp_path / "column.npz", x=x, y=labels[:, None])
    np.testing.assert_array_equal(load_data(str(tmp_path / "column.npz")).y, labels)
    np.savez(tmp_path / "soft.npz", x=x, y=np.full((4, 3), 1 / 3, np.float32))
    with pytest.raises(DataError, match="one label per image"):
        load_data(str(tmp_path / "soft.npz"))


def test_npz_with_keras_splits_is_read_by_split(tmp_path):
    """Keras' mnist.npz holds x_train/y_train/x_test/y_test: `FILE.npz:test` reads that split (labels
    too, for the build's early class check); without a split the error names the choices."""
    from hadmc_deploy.data import check_source_exists, source_labels

    train, test = np.zeros((5, 8, 8), np.uint8), np.full((3, 8, 8), 255, np.uint8)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=train, y_train=np.arange(5) % 2, x_test=test, y_test=np.array([1, 0, 1]))
    check_source_exists(f"{path}:test")
    ds = load_data(f"{path}:test", Preprocess(mean=(0.0,), std=(1.0,)))
    assert ds.x.shape == (3, 1, 8, 8) and float(ds.x.max()) == 1.0
    np.testing.assert_array_equal(source_labels(f"{path}:test"), [1, 0, 1])
    with pytest.raises(DataError, match="several splits"):
        load_data(str(path))
    with pytest.raises(DataError, match="no split 'val'"):
        load_data(f"{path}:val")


def test_image_folder_tree_of_splits_is_read_by_split(tmp_path):
    """An ImageNet-style tree (DIR/train/<class>/, DIR/val/<class>/): `DIR:val` reads DIR/val's
    classes; DIR alone is refused with a hint naming a split (it read train and val as two classes
    holding no images), and a split that is not there names the ones that are."""
    from PIL import Image

    from hadmc_deploy.data import source_labels

    for split, count in (("train", 2), ("val", 1)):
        for cls, value in (("cat", 0), ("dog", 255)):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((6, 6), value, np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    ds = load_data(f"{tmp_path}:val", Preprocess(mean=(0.0,), std=(1.0,)))
    np.testing.assert_array_equal(ds.y, [0, 1])
    assert ds.x.shape == (2, 1, 6, 6) and float(ds.x[1].min()) == 1.0
    np.testing.assert_array_equal(source_labels(f"{tmp_path}:train"), [0, 0, 1, 1])
    with pytest.raises(DataError, match="holds no images") as err:
        load_data(str(tmp_path))
    assert f"{tmp_path}:train" in str(err.value.hint)
    with pytest.raises(DataError, match="no folder 'test'"):
        load_data(f"{tmp_path}:test")


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 1, 2, 2)))
    with pytest.raises(DataError, match="'x' and 'y'"):
        load_data(str(tmp_path / "bad.npz"))


def test_resize_channels_and_limit(tmp_path):
    x = np.zeros((10, 1, 8, 8), np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(10, np.int64))
    ds = load_data(str(tmp_path / "d.npz"), Preprocess(resize=(16, 12), channels=3), limit=4)
    assert ds.x.shape == (4, 3, 16, 12)


def test_image_folder(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            pil.fromarray(np.full((5, 5, 3), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load_data(str(tmp_path), Preprocess(resize=(4, 4)))
    assert ds.x.shape == (4, 3, 4, 4) and sorted(ds.y.tolist()) == [0, 0, 1, 1]


def test_a_folder_of_images_alone_is_unlabelled_calibration_data(tmp_path):
    """A calibration set is often a flat folder of photos of mixed sizes: read (resized), labelled
    UNLABELLED, and refused where labels are needed."""
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for i, size in enumerate([(6, 9), (12, 7), (5, 5)]):
        pil.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_data(str(tmp_path), Preprocess(resize=(8, 8)))
    assert ds.x.shape == (3, 3, 8, 8) and not ds.labelled
    with pytest.raises(DataError, match="no labels"):
        check_matches_model(ds, (1, 3, 8, 8), num_classes=10, role="eval")


def test_colour_images_for_a_grayscale_model_become_luma(tmp_path):
    """As PIL's convert("L") (ITU-R BT.601), before the grayscale normalisation; 2 channels stay an error."""
    pil = pytest.importorskip("PIL.Image")
    rgb = np.random.default_rng(1).integers(0, 255, (2, 3, 4, 5), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x=rgb, y=np.zeros(2, np.int64))
    gray = load_data(str(tmp_path / "rgb.npz"), Preprocess(channels=1, mean=(0.0,), std=(1.0,)))
    expected = np.stack([np.asarray(pil.fromarray(img.transpose(1, 2, 0)).convert("L"), np.float32) / 255.0 for img in rgb])
    assert gray.x.shape == (2, 1, 4, 5)
    assert np.abs(gray.x[:, 0] - expected).max() <= 1.0 / 255 + 1e-6  # PIL rounds to whole levels
    np.savez(tmp_path / "two.npz", x=rgb[:, :2], y=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="2-channel images but the model takes 1"):
        load_data(str(tmp_path / "two.npz"), Preprocess(channels=1))


def test_a_colour_folder_with_a_few_grayscale_files_reads_them_as_colour(tmp_path):
    """ImageNet-style folders hold a few grayscale JPEGs among colour ones: those become colour as
    PIL's convert("RGB") makes them (R = G = B). The folder was refused ("image ... has shape
    (1, 8, 8), others (3, 8, 8)") with advice to pass a --resize flag no command has."""
    pil = pytest.importorskip("PIL.Image")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rng = np.random.default_rng(0)
    pil.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "a" / "colour.png")
    gray = rng.integers(0, 255, (8, 8), dtype=np.uint8)
    pil.fromarray(gray, "L").save(tmp_path / "b" / "gray.png")
    ds = load_data(str(tmp_path), Preprocess(resize=(8, 8), channels=3, mean=(0.0,), std=(1.0,)))
    assert ds.x.shape == (2, 3, 8, 8)
    assert np.allclose(ds.x[1], np.repeat(gray[None] / 255.0, 3, axis=0), atol=1e-6)
    pil.fromarray(rng.integers(0, 255, (9, 9, 3), dtype=np.uint8)).save(tmp_path / "b" / "other_size.png")
    with pytest.raises(DataError, match="9x9, others 8x8") as err:  # read unresized: one size, named
        load_data(str(tmp_path))
    assert "--resize" not in (err.value.hint or "")


def test_sixteen_bit_grayscale_images_keep_their_values(tmp_path):
    """16-bit PNGs (medical, microscopy, depth) read as their share of the 16-bit range; PIL's
    convert("L") clipped every value above 255, so all but the black pixels read as white. An 8-bit
    file beside them reads as its share of 255."""
    pil = pytest.importorskip("PIL.Image")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    deep = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)
    pil.fromarray(deep).save(tmp_path / "a" / "deep.png")
    pil.fromarray(np.full((8, 8), 51, np.uint8)).save(tmp_path / "b" / "plain.png")
    ds = load_data(str(tmp_path), Preprocess(mean=(0.0,), std=(1.0,)))
    assert np.allclose(ds.x[0, 0], deep / 65535.0, atol=1e-6)
    assert np.allclose(ds.x[1, 0], 0.2, atol=1e-6)
    small = load_data(str(tmp_path), Preprocess(resize=(4, 4), mean=(0.0,), std=(1.0,)))
    assert 0.3 < float(small.x[0].mean()) < 0.7  # resized, still spread over the range


def test_unreadable_image_names_the_file(tmp_path):
    pytest.importorskip("PIL.Image")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_data(str(tmp_path))


def test_empty_folder_and_missing_source(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_data(str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        load_data(str(tmp_path / "missing"))


def test_builtin_digits_split_is_fixed():
    pytest.importorskip("sklearn")
    a = load_data("builtin:digits:train")
    b = load_data("builtin:digits:test")
    assert len(a) + len(b) == 1797 and a.x.shape[1:] == (1, 8, 8)
    assert a.sha256() == load_data("builtin:digits:train").sha256()


def test_channel_mismatch_vs_model(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 1, 8, 8), np.uint8), y=np.zeros(2, np.int64))
    ds = load_data(str(tmp_path / "d.npz"))
    with pytest.raises(DataError, match="1-channel images but the model takes 3"):
        check_matches_model(ds, (1, 3, 8, 8))
    with pytest.raises(DataError, match="--resize 16,16"):
        check_matches_model(ds, (1, 1, 16, 16))


def test_check_source_exists_without_reading(tmp_path, idx_dir):
    from hadmc_deploy.data import check_source_exists

    check_source_exists("builtin:fashion-mnist:train")
    check_source_exists(f"{idx_dir}:train")
    with pytest.raises(DataError, match="does not exist"):
        check_source_exists(str(tmp_path / "missing.npz"))


def test_unlabelled_npz_calibrates_but_does_not_evaluate(tmp_path):
    """Images without labels are fine for calibration; as --eval or --train they are refused
    with a message about labels (not about calibration)."""
    from hadmc_deploy.data import check_matches_model

    np.savez(tmp_path / "x.npz", x=np.zeros((4, 1, 8, 8), np.uint8))
    ds = load_data(str(tmp_path / "x.npz"))
    check_matches_model(ds, (1, 1, 8, 8), 10, role="calib")
    with pytest.raises(DataError, match="--eval data .* has no labels"):
        check_matches_model(ds, (1, 1, 8, 8), 10, role="eval")


def test_the_calibration_images_loaded_reach_every_pass_that_reads_them():
    """The ranges + INT8 check and BatchNorm + the agreement check (on the images after BatchNorm's)
    read the calibration images; a build loads as far as the furthest reaches, capped in bytes."""
    from hadmc_deploy.build.sample_budget import (
        CALIB_BEYOND_BYTES,
        MIN_CHECK_SAMPLES,
        bn_calib_samples,
        calib_images_to_load,
        check_samples,
        verify_samples,
    )

    small, r18, r18_pruned = 2_000_000, 1_814_073_344, 730_000_000
    # a small CNN: every pass at its most (BatchNorm's 1,024, the check's 1,024 after them)
    assert calib_images_to_load(128, small, small // 2) == bn_calib_samples(small // 2) + check_samples(small) == 2048
    # a ResNet-18 at 224: BatchNorm's images through the pruned model, and the fewest the check can pass on
    assert check_samples(r18) == MIN_CHECK_SAMPLES == 299
    assert calib_images_to_load(128, r18, r18_pruned) == bn_calib_samples(r18_pruned) + check_samples(r18) == 410 + 299
    # nothing pruned (or --train feeding recovery): only the ranges and their held-out check
    assert calib_images_to_load(128, r18, None, recovery_reads=False) == 128 + verify_samples(r18) == 256
    assert calib_images_to_load(2000, r18, r18_pruned) == 2000 + verify_samples(r18)
    # costs not known: the most each pass would take, within the byte cap (1 GiB of 3x224x224 images: 1,783)
    assert calib_images_to_load(128, None, None) == bn_calib_samples(None) + check_samples(None) == 2048
    at_224 = 4 * 3 * 224 * 224
    assert calib_images_to_load(128, None, None, image_bytes=at_224) == 128 + CALIB_BEYOND_BYTES // at_224 == 128 + 1783


def test_bn_recalibration_images_shrink_only_for_expensive_models():
    from hadmc_deploy.build.sample_budget import BN_CALIB_MIN_SAMPLES, BN_CALIB_SAMPLES, bn_calib_samples

    assert bn_calib_samples(None) == BN_CALIB_SAMPLES
    assert bn_calib_samples(2_000_000) == BN_CALIB_SAMPLES  # a 28x28 CNN: every image
    assert bn_calib_samples(800_000_000) == 375  # a pruned ResNet-18 at 224: 0.3 TMACs of passes
    assert bn_calib_samples(50_000_000_000) == BN_CALIB_MIN_SAMPLES


def test_labels_are_read_without_the_images_as_loading_reads_them(tmp_path, idx_dir):
    """`source_labels` (the build's check before its heavy stages) gives the labels `load_data` does,
    for every format: an IDX split, an npz with and without 'y', class folders, a flat folder."""
    from hadmc_deploy.data import UNLABELLED, source_labels

    pil = pytest.importorskip("PIL.Image")
    np.savez(tmp_path / "y.npz", x=np.zeros((3, 1, 4, 4), np.uint8), y=np.array([0, 5, 2]))
    np.savez(tmp_path / "noy.npz", x=np.zeros((3, 1, 4, 4), np.uint8))
    for cls in ("a", "b", "c"):
        (tmp_path / "folders" / cls).mkdir(parents=True)
        pil.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "folders" / cls / "0.png")
    (tmp_path / "flat").mkdir()
    pil.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "flat" / "0.png")
    for source in (f"{idx_dir}:train", f"{idx_dir}:test", str(tmp_path / "y.npz"), str(tmp_path / "noy.npz"), str(tmp_path / "folders"),
                   str(tmp_path / "flat"), "builtin:digits:test"):
        loaded = load_data(source)
        labels = source_labels(source)
        assert labels.max() == loaded.y.max() and bool((labels == UNLABELLED).any()) == (not loaded.labelled), source


def test_calibration_labels_are_never_checked_against_the_models_classes():
    """Calibration reads no labels (ranges, agreement checks and distillation take the original's
    outputs): 10-class images calibrate a 7-class model; as --eval they are refused, naming both."""
    ds = load_data("builtin:digits:test")
    check_matches_model(ds, (1, 1, 8, 8), 7, role="calib")
    with pytest.raises(DataError, match="labels up to 9 but the model has 7 outputs"):
        check_matches_model(ds, (1, 1, 8, 8), 7, role="eval")


def test_a_build_refuses_eval_labels_beyond_the_models_classes_before_measuring_anything(tmp_path, capsys):
    """A 10-class model given --eval data labelled up to 11: exit 8 in the load stage, before the
    latency table, the search or any data is preprocessed."""


    rng = np.random.default_rng(0)
    np.savez(tmp_path / "eval.npz", x=rng.integers(0, 255, (20, 1, 16, 16), dtype=np.uint8), y=np.arange(20) % 12)
    assert _tiny_build_stopped_early(tmp_path, tmp_path / "eval.npz")
    assert "labels up to 11 but the model has 10 outputs" in capsys.readouterr().err


def _tiny_build_stopped_early(tmp_path, eval_source, calib=None) -> bool:  # noqa: ANN001
    """A tiny CNN built with --eval `eval_source` (and --calib `calib`, else digits): whether it
    exited 8 before writing a latency table or a width plan."""
    import torch
    from pipeline_models import DIGITS_TRAIN, TINY_ARCH, tiny_cnn

    from hadmc_deploy.cli import main

    model = tmp_path / "tiny.pth"
    torch.save(tiny_cnn().state_dict(), model)
    out = tmp_path / "out"
    rc = main(["build", str(model), "--arch", TINY_ARCH, "--input-shape", "1,1,16,16", "--target", "cpu", "--calib", str(calib or DIGITS_TRAIN),
               "--eval", str(eval_source), "--speedup", "1.5", "-q", "--out", str(out)])
    return rc == 8 and not list(out.rglob("lut-*.json")) and not (out / "width_plan.json").exists()


def test_a_build_refuses_a_broken_image_in_an_eval_folder_before_measuring_anything(tmp_path, capsys):
    """A class folder with a file that is not an image: exit 8 in the load stage, naming the file,
    before the latency table or the search (it failed when the evaluation first read the folder)."""
    pil = pytest.importorskip("PIL.Image")
    for cls in range(3):
        (tmp_path / "eval" / str(cls)).mkdir(parents=True)
        pil.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "eval" / str(cls) / "0.png")
    (tmp_path / "eval" / "2" / "broken.jpg").write_bytes(b"not a jpeg")
    assert _tiny_build_stopped_early(tmp_path, tmp_path / "eval")
    assert "broken.jpg" in capsys.readouterr().err


def test_a_calibration_set_too_small_is_refused_before_measuring_anything(tmp_path, capsys):
    """Five calibration images (16 at least are needed): exit 8 before the latency table and the
    search; the calibrate stage found it after both, and after recovery."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.integers(0, 255, (5, 1, 16, 16), dtype=np.uint8))
    assert _tiny_build_stopped_early(tmp_path, "builtin:digits:test", calib=tmp_path / "calib.npz")
    assert "has only 5 samples" in capsys.readouterr().err


def test_a_training_set_too_large_for_memory_is_subset_or_refused(tmp_path, monkeypatch, capsys):
    """Fashion-MNIST's 60,000 images for a 3x224x224 model are 36 GB preprocessed. With the memory
    this machine reports shrunk to 40 MB, digits' 1,437 training images at 1x64x64 (16 KB each) do
    not fit its share: a build loads a seeded subset with a warning naming --train-limit, and
    refuses a --train-limit that does not fit before loading anything."""
    import torch
    from pipeline_models import DIGITS_TRAIN, TINY_ARCH, tiny_cnn

    import hadmc_deploy.build.inputs as inputs
    from hadmc_deploy.build.sample_budget import DATA_MEMORY_SHARE
    from hadmc_deploy.cli import main

    monkeypatch.setattr(inputs, "available_memory_bytes", lambda: 40_000_000)
    fits = int(40_000_000 * DATA_MEMORY_SHARE) // (4 * 64 * 64)
    assert fits < 1437
    model = tmp_path / "tiny.pth"
    torch.save(tiny_cnn().state_dict(), model)
    common = ["build", str(model), "--arch", TINY_ARCH, "--input-shape", "1,1,64,64", "--target", "cpu", "--precision", "fp32",
              "--ratio", "0.5", "--allow-accuracy-drop", "--no-measure-lut", "--epochs", "1", "--batch", "1", "--runs", "3", "--warmup", "1", "--train", DIGITS_TRAIN]
    rc = main([*common, "--train-limit", str(fits + 1), "-q", "--out", str(tmp_path / "refused")])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 8 and f"--train-limit {fits + 1}" in err and f"pass --train-limit {fits} or less" in err
    rc = main([*common, "--out", str(tmp_path / "subset")])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 0 and f"using a seeded {fits:,} of them (pass --train-limit to choose)" in err


def test_a_build_evaluated_on_the_images_it_was_fitted_to_is_warned(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """--eval naming the --train data (or, without --train, the --calib data a pruned model is
    distilled on) measures accuracy and the guard on fitted images: warned before the stages and in
    the report, whichever spelling names the source; held-out data is not warned about."""
    from types import SimpleNamespace

    from hadmc_deploy.build.inputs import eval_leak_warning
    from hadmc_deploy.data import source_identity

    (tmp_path / "imgs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert source_identity("builtin:fashion-mnist") == source_identity("builtin:fashion-mnist:train") != source_identity("builtin:fashion-mnist:test")
    assert source_identity("imgs") == source_identity(str(tmp_path / "imgs")) == source_identity("./imgs")

    def ctx(train, calib, eval_):  # noqa: ANN001, ANN202
        return SimpleNamespace(settings=SimpleNamespace(data=SimpleNamespace(train=train, calib_source=calib or train, eval=eval_)))

    assert "is the --train data" in eval_leak_warning(ctx("builtin:fashion-mnist", None, "builtin:fashion-mnist:train"))
    assert eval_leak_warning(ctx("builtin:fashion-mnist:train", None, "builtin:fashion-mnist:test")) is None
    assert "is the --calib data" in eval_leak_warning(ctx(None, "imgs", str(tmp_path / "imgs")))
    assert eval_leak_warning(ctx("builtin:fashion-mnist:train", "imgs", "imgs")) is None  # recovery trains on --train: only ranges saw them
    assert eval_leak_warning(ctx("imgs", None, None)) is None
