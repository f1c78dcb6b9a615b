"""Demo datasets from scikit-learn's bundled data (no network), and a batch loader.

Every loader standardizes the features with the training split's statistics and
splits with a fixed seed, so runs are reproducible. scikit-learn is an optional
dependency (the ``demo`` extra).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterator, Mapping
from typing import Literal

import jax
import numpy as np

from jaxloss.contrastive import make_pairs

Task = Literal["regression", "binary", "multiclass", "siamese"]
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A train/test split of arrays keyed like the training adapters expect:
    ``{"x", "y"}`` for supervised tasks, ``{"a", "b", "similar"}`` for Siamese pairs."""

    name: str
    task: Task
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    num_classes: int | None = None

    @property
    def num_features(self) -> int:
        first = self.train["x"] if "x" in self.train else self.train["a"]
        return int(first.shape[-1])


def _sklearn() -> types.ModuleType:
    try:
        from sklearn import datasets
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the demo datasets need scikit-learn: pip install 'jaxloss[demo]'"
        ) from e
    module: types.ModuleType = datasets  # unannotated: sklearn ships no types
    return module


def _split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(n * test_fraction))
    return order[n_test:], order[:n_test]


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # constant features (digits' blank pixels)
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)


def _supervised(name: str, task: Task, x: np.ndarray, y: np.ndarray, test_fraction: float,
                seed: int, num_classes: int | None = None) -> Dataset:
    train_idx, test_idx = _split(len(x), test_fraction, seed)
    x_train, x_test = _standardize(x[train_idx], x[test_idx])
    if task == "regression":
        y_train, y_test = (v[:, 0] for v in _standardize(y[train_idx, None], y[test_idx, None]))
    else:
        y_train, y_test = y[train_idx].astype(np.int32), y[test_idx].astype(np.int32)
    return Dataset(name, task, {"x": x_train, "y": y_train}, {"x": x_test, "y": y_test},
                   num_classes)


def load_diabetes(*, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """442 patients, 10 features, disease progression (regression); target standardized."""
    bunch = _sklearn().load_diabetes()
    return _supervised("diabetes", "regression", bunch.data, bunch.target.astype(np.float64),
                       test_fraction, seed)


def load_breast_cancer(*, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """569 tumours, 30 features, malignant (0) or benign (1)."""
    bunch = _sklearn().load_breast_cancer()
    return _supervised("breast_cancer", "binary", bunch.data, bunch.target, test_fraction,
                       seed, num_classes=2)


def load_digits(*, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """1797 8x8 handwritten digits, 64 features, 10 classes."""
    bunch = _sklearn().load_digits()
    return _supervised("digits", "multiclass", bunch.data, bunch.target, test_fraction, seed,
                       num_classes=10)


def digit_pairs(*, train_pairs: int = 8192, test_pairs: int = 2048,
                test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """Balanced pairs of digits for Siamese training, from :func:`jaxloss.make_pairs`.

    Train pairs are drawn from the training digits and test pairs from the test
    digits only. ``test`` also keeps the test digits themselves (``"x"``, ``"y"``) for
    plotting the embedding.
    """
    digits = load_digits(test_fraction=test_fraction, seed=seed)
    key_train, key_test = jax.random.split(jax.random.key(seed))

    def pairs(split: Mapping[str, np.ndarray], key: jax.Array, n: int) -> dict[str, np.ndarray]:
        a, b, similar = (np.asarray(v) for v in make_pairs(split["y"], key, n))
        return {"a": split["x"][a], "b": split["x"][b], "similar": similar}

    test = pairs(digits.test, key_test, test_pairs) | {"x": digits.test["x"],
                                                      "y": digits.test["y"]}
    return Dataset("digit_pairs", "siamese", pairs(digits.train, key_train, train_pairs),
                   test, num_classes=10)


class Loader:
    """Batches of a dict of equal-length arrays, reshuffled each epoch.

    ``loader(epoch, seed)`` yields the batches of that epoch; the order depends only
    on ``(seed, epoch)``, so a run resumed from a checkpoint sees the same batches as an
    uninterrupted one. With ``drop_last`` (the default when shuffling) every batch has
    the same shape, so a jitted step compiles once.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, *,
                 shuffle: bool = True, drop_last: bool | None = None) -> None:
        lengths = {k: len(v) for k, v in arrays.items()}
        if not arrays or len(set(lengths.values())) != 1:
            raise ValueError(f"arrays must be a non-empty dict of equal lengths, got {lengths}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.num_examples = next(iter(lengths.values()))
        self.batch_size = min(batch_size, self.num_examples)
        self.shuffle = shuffle
        self.drop_last = shuffle if drop_last is None else drop_last

    def __len__(self) -> int:
        full, rest = divmod(self.num_examples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __call__(self, epoch: int = 0, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
        order = np.arange(self.num_examples)
        if self.shuffle:
            order = np.random.default_rng([seed, epoch]).permutation(self.num_examples)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield {k: v[idx] for k, v in self.arrays.items()}
