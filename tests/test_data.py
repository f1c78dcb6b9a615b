"""The demo datasets (scikit-learn's bundled data) and the batch Loader."""

import functools

import numpy as np
import pytest
from sklearn import datasets as sk

from jaxloss import data

# name -> (loader, scikit-learn loader, rows, features, task, num_classes)
DATASETS = {
    "diabetes": (data.load_diabetes, sk.load_diabetes, 442, 10, "regression", None),
    "breast_cancer": (data.load_breast_cancer, sk.load_breast_cancer, 569, 30, "binary", 2),
    "digits": (data.load_digits, sk.load_digits, 1797, 64, "multiclass", 10),
}


@functools.cache
def _load(name, seed=0):
    return DATASETS[name][0](seed=seed)


@functools.cache
def _pairs(seed=0):
    return data.digit_pairs(train_pairs=1000, test_pairs=600, seed=seed)


def _rows(x):
    """The rows of a 2-D array as a set of bytes (float32, exact)."""
    x = np.ascontiguousarray(x, np.float32)
    return {row.tobytes() for row in x}


# ---------------------------------------------------------------------------------
# Supervised datasets.


@pytest.mark.parametrize("name", DATASETS)
def test_shapes_dtypes_and_metadata(name):
    _, _, n, d, task, num_classes = DATASETS[name]
    ds = _load(name)
    assert ds.name == name
    assert ds.task == task
    assert ds.num_classes == num_classes
    assert ds.num_features == d
    assert set(ds.train) == set(ds.test) == {"x", "y"}
    n_train, n_test = len(ds.train["x"]), len(ds.test["x"])
    assert n_train + n_test == n
    assert abs(n_test - n * 0.25) <= 1  # the default test_fraction
    for split, rows in ((ds.train, n_train), (ds.test, n_test)):
        assert split["x"].shape == (rows, d)
        assert split["x"].dtype == np.float32
        assert split["y"].shape == (rows,)
        assert np.all(np.isfinite(split["x"]))
        if task == "regression":
            assert split["y"].dtype == np.float32
        else:
            assert split["y"].dtype == np.int32
            assert split["y"].min() >= 0 and split["y"].max() < num_classes


@pytest.mark.parametrize("name", DATASETS)
def test_train_features_are_standardized_with_train_statistics(name):
    ds = _load(name)
    raw = DATASETS[name][1]().data
    x_train, x_test = ds.train["x"], ds.test["x"]
    varying = raw.std(axis=0) > 0
    np.testing.assert_allclose(x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x_train.std(axis=0)[varying], 1.0, atol=1e-4)
    # Constant columns (digits' blank pixels) stay finite: they become 0.
    np.testing.assert_array_equal(x_train[:, ~varying], 0.0)
    np.testing.assert_array_equal(x_test[:, ~varying], 0.0)
    # The test split is transformed with the *train* statistics: its mean is not 0
    # (it would be with its own statistics), and neither is the whole set's (it would be
    # with the full data's statistics).
    assert np.abs(x_test.mean(axis=0)[varying]).max() > 1e-2
    assert np.abs(np.concatenate([x_train, x_test]).mean(axis=0)[varying]).max() > 1e-3
    # Both splits went through one affine map per column: the sorted standardized
    # values of train + test are an exact affine image of the sorted raw column.
    both = np.concatenate([x_train, x_test]).astype(np.float64)
    for j in np.flatnonzero(varying):
        z, r = np.sort(both[:, j]), np.sort(raw[:, j])
        slope, intercept = np.polyfit(r, z, 1)
        assert slope > 0
        np.testing.assert_allclose(z, slope * r + intercept, atol=1e-4, err_msg=f"column {j}")


def test_diabetes_target_is_standardized_with_train_statistics():
    ds = _load("diabetes")
    raw = sk.load_diabetes().target
    y_train, y_test = ds.train["y"], ds.test["y"]
    assert abs(float(y_train.mean())) < 1e-5
    assert abs(float(y_train.std()) - 1.0) < 1e-4
    assert abs(float(y_test.mean())) > 1e-3
    z = np.sort(np.concatenate([y_train, y_test]).astype(np.float64))
    r = np.sort(raw)
    slope, intercept = np.polyfit(r, z, 1)
    np.testing.assert_allclose(z, slope * r + intercept, atol=1e-4)
    assert slope == pytest.approx(1 / raw.std(), rel=0.2)  # train std ~ full std


@pytest.mark.parametrize("name", DATASETS)
def test_train_and_test_are_disjoint_and_cover_the_dataset(name):
    ds = _load(name)
    bunch = DATASETS[name][1]()
    n = len(bunch.data)
    assert len(np.unique(bunch.data, axis=0)) == n  # every raw row is distinct
    both = np.concatenate([ds.train["x"], ds.test["x"]])
    assert len(both) == n
    # Standardizing is a per-column bijection, so distinct rows stay distinct: a row in
    # both splits (or twice in one) would show up as a duplicate here.
    assert len(np.unique(both, axis=0)) == n
    assert not _rows(ds.train["x"]) & _rows(ds.test["x"])
    if ds.task != "regression":  # every class keeps its count
        labels = np.concatenate([ds.train["y"], ds.test["y"]])
        np.testing.assert_array_equal(np.bincount(labels), np.bincount(bunch.target))


@pytest.mark.parametrize("name", DATASETS)
def test_split_is_deterministic_for_a_seed_and_differs_for_another(name):
    first, again = _load(name), DATASETS[name][0](seed=0)
    for split in ("train", "test"):
        for key in ("x", "y"):
            np.testing.assert_array_equal(getattr(first, split)[key],
                                          getattr(again, split)[key])
    other = _load(name, seed=1)
    assert other.test["x"].shape == first.test["x"].shape
    assert _rows(other.test["x"]) != _rows(first.test["x"])
    assert not np.array_equal(other.train["y"], first.train["y"])


def test_test_fraction_sets_the_split_size_and_is_validated():
    ds = data.load_breast_cancer(test_fraction=0.5)
    assert abs(len(ds.test["x"]) - 569 / 2) <= 1
    assert len(ds.train["x"]) + len(ds.test["x"]) == 569
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="test_fraction"):
            data.load_breast_cancer(test_fraction=bad)


# ---------------------------------------------------------------------------------
# Digit pairs.


def test_digit_pairs_shapes_and_balance():
    ds = _pairs()
    assert ds.name == "digit_pairs"
    assert ds.task == "siamese"
    assert ds.num_classes == 10
    assert ds.num_features == 64
    assert set(ds.train) == {"a", "b", "similar"}
    assert set(ds.test) == {"a", "b", "similar", "x", "y"}
    for split, n in ((ds.train, 1000), (ds.test, 600)):
        for key in ("a", "b"):
            assert split[key].shape == (n, 64)
            assert split[key].dtype == np.float32
        assert split["similar"].shape == (n,)
        assert split["similar"].dtype == bool
        assert abs(split["similar"].mean() - 0.5) < 0.02
        # The similar pairs are not all first (make_pairs shuffles).
        assert 0.2 < split["similar"][: n // 2].mean() < 0.8
    digits = _load("digits")
    np.testing.assert_array_equal(ds.test["x"], digits.test["x"])
    np.testing.assert_array_equal(ds.test["y"], digits.test["y"])


@pytest.mark.parametrize("split", ["train", "test"])
def test_digit_pairs_come_from_their_own_split_and_match_the_labels(split):
    pairs = getattr(_pairs(), split)
    digits = getattr(_load("digits"), split)
    label_of = {row.tobytes(): int(y) for row, y in zip(digits["x"], digits["y"], strict=True)}
    assert len(label_of) == len(digits["x"])  # digits' rows are distinct
    label_a = np.array([label_of[row.tobytes()] for row in pairs["a"]])  # KeyError: not a row
    label_b = np.array([label_of[row.tobytes()] for row in pairs["b"]])
    np.testing.assert_array_equal(pairs["similar"], label_a == label_b)
    # Pairs are of two different digits, never an example with itself.
    assert not np.any(np.all(pairs["a"] == pairs["b"], axis=1))
    # Many anchors and many classes are used.
    assert len(_rows(pairs["a"])) > len(pairs["a"]) // 3
    assert set(label_a) == set(range(10))


def test_digit_pairs_are_deterministic_for_a_seed():
    first, again = _pairs(), data.digit_pairs(train_pairs=1000, test_pairs=600, seed=0)
    for split in ("train", "test"):
        for key in ("a", "b", "similar"):
            np.testing.assert_array_equal(getattr(first, split)[key],
                                          getattr(again, split)[key])
    other = _pairs(seed=1)
    assert not np.array_equal(other.train["a"], first.train["a"])


# ---------------------------------------------------------------------------------
# Loader.


def _arrays(n):
    return {"x": np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32),
            "y": np.arange(n, dtype=np.int32)}


def _ids(batches):
    return [b["y"].tolist() for b in batches]


def test_loader_shuffled_batches_cover_every_example_once():
    loader = data.Loader(_arrays(12), 4)
    batches = list(loader(0, 0))
    assert len(loader) == len(batches) == 3
    for b in batches:
        assert set(b) == {"x", "y"}
        assert b["x"].shape == (4, 3) and b["y"].shape == (4,)
        assert b["x"].dtype == np.float32 and b["y"].dtype == np.int32
        np.testing.assert_array_equal(b["x"][:, 0], b["y"])  # rows stay aligned
        np.testing.assert_array_equal(b["x"][:, 2], b["y"])
    seen = np.concatenate([b["y"] for b in batches])
    np.testing.assert_array_equal(np.sort(seen), np.arange(12))
    assert not np.array_equal(seen, np.arange(12))  # actually shuffled


def test_loader_drops_the_last_partial_batch_when_shuffling():
    loader = data.Loader(_arrays(10), 4)
    assert loader.drop_last
    for epoch in range(5):
        batches = list(loader(epoch, 0))
        assert len(loader) == len(batches) == 2
        assert all(len(b["y"]) == 4 for b in batches)
        seen = np.concatenate([b["y"] for b in batches])
        assert len(np.unique(seen)) == 8  # no example twice


def test_loader_keeps_the_last_partial_batch_when_asked():
    loader = data.Loader(_arrays(10), 4, drop_last=False)
    batches = list(loader(0, 0))
    assert len(loader) == len(batches) == 3
    assert [len(b["y"]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.sort(np.concatenate([b["y"] for b in batches])),
                                  np.arange(10))


def test_loader_without_shuffle_keeps_order_and_last_batch():
    loader = data.Loader(_arrays(10), 4, shuffle=False)
    assert not loader.drop_last
    expected = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert _ids(loader(0, 0)) == expected
    assert _ids(loader(3, 99)) == expected  # epoch and seed do not matter
    dropped = data.Loader(_arrays(10), 4, shuffle=False, drop_last=True)
    assert len(dropped) == 2
    assert _ids(dropped(0, 0)) == expected[:2]


def test_loader_order_depends_only_on_epoch_and_seed():
    loader = data.Loader(_arrays(64), 8)
    order = _ids(loader(3, 7))
    assert _ids(loader(3, 7)) == order  # the same call again
    assert _ids(data.Loader(_arrays(64), 8)(3, 7)) == order  # a fresh loader
    list(loader(0, 0))  # other epochs in between change nothing
    assert _ids(loader(3, 7)) == order
    assert _ids(loader(4, 7)) != order  # another epoch
    assert _ids(loader(3, 8)) != order  # another seed
    assert _ids(loader()) == _ids(loader(0, 0))


def test_loader_batch_larger_than_the_data_gives_one_batch():
    loader = data.Loader(_arrays(5), 100)
    batches = list(loader(0, 0))
    assert len(loader) == len(batches) == 1
    np.testing.assert_array_equal(np.sort(batches[0]["y"]), np.arange(5))


@pytest.mark.parametrize("arrays", [
    {"x": np.zeros((4, 2)), "y": np.zeros(3)},
    {},
], ids=["unequal_lengths", "empty"])
def test_loader_rejects_bad_arrays(arrays):
    with pytest.raises(ValueError, match="equal lengths"):
        data.Loader(arrays, 2)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "4"])
def test_loader_rejects_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        data.Loader(_arrays(4), batch_size)
