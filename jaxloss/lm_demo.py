"""A language model trained end to end with the fused LM-head loss (``jaxloss demo --task lm``).

A small decoder-only Transformer (Flax NNX) learns the Python standard library's own
``.py`` sources, read from the running interpreter's library directory (no download),
split into training and validation files by a hash of each file's path, and tokenized
with a byte-level BPE trained here by the ``tokenizers`` package. The loss is
:func:`jaxloss.linear_softmax_cross_entropy` on the last hidden state and the
unembedding weight, with a logit soft-cap and a z-loss: the ``[B*T, V]`` logits are
never formed. The demo reports the losses, the validation perplexity next to a unigram
model's, the training throughput, and the temporary memory of the whole jitted train
step against the same step with optax on materialized logits.

The pieces (:func:`stdlib_sources`, :func:`split_by_file`, :func:`prepare_corpus`,
:class:`TransformerLM`, :func:`make_train_step`, :func:`unigram_perplexity`,
:func:`greedy_sample`, :func:`run`) are what ``notebooks/04_language_model.ipynb``
walks through.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxloss

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "END_OF_TEXT",
    "IGNORE_INDEX",
    "LARGE",
    "LOSS_OPTIONS",
    "Corpus",
    "LMConfig",
    "TransformerLM",
    "bisect_largest",
    "fused_loss",
    "greedy_sample",
    "largest_batch",
    "make_train_step",
    "materialized_loss",
    "prepare_corpus",
    "run",
    "split_by_file",
    "step_footprint",
    "stdlib_sources",
    "train_tokenizer",
    "unigram_perplexity",
]

END_OF_TEXT = "<|endoftext|>"
"""The special token between two files of the token stream (id 0)."""

IGNORE_INDEX = -100
"""The label of positions without a target (:func:`jaxloss.shift_labels`'s default)."""

LOSS_OPTIONS: dict[str, Any] = {"z_loss": 1e-4, "softcap": 30.0}
"""The LM-head options of both losses: a z-loss that keeps the log-partition near 0,
and a tanh soft-cap of the logits at ±30 (as in Gemma 2)."""

_CACHE_FORMAT = 1  # bump when the cached files change meaning


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Everything that determines a run: data, tokenizer, model, optimizer, schedule.

    The defaults are the command's: on a 2-core CPU the whole run takes about 70 s,
    training the tokenizer included (see the docs' "Training a language model" page)."""

    vocab_size: int = 32768
    max_files: int | None = None  # None: every .py file of the standard library
    validation_fraction: float = 0.1
    steps: int = 150
    batch_size: int = 16
    seq_len: int = 128
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 2
    mlp_ratio: int = 4
    learning_rate: float = 5e-3
    warmup_steps: int = 15
    eval_every: int = 25
    eval_windows: int = 64  # validation windows of seq_len tokens
    sample_tokens: int = 40
    prompt: str = "def __init__(self"
    seed: int = 0


LARGE = LMConfig(steps=2000, batch_size=32, seq_len=512, d_model=512, num_heads=8,
                 num_layers=8, learning_rate=1e-3, warmup_steps=100, eval_every=200)
"""A configuration for an accelerator (``jaxloss demo --task lm --size large``): 8
blocks of ``d_model`` 512 over a context of 512 tokens, 59 M parameters at
V = 32768; far too slow for a CPU."""


# ---------------------------------------------------------------------------------
# Data: the standard library's sources, split by file, tokenized with a local BPE.


def stdlib_root() -> pathlib.Path:
    """The running interpreter's standard-library directory."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(root: pathlib.Path | None = None) -> list[str]:
    """The relative paths (POSIX form) of the ``.py`` files under ``root``, sorted.

    ``site-packages`` (third-party code installed beside the library) is left out.
    """
    root = stdlib_root() if root is None else root
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*.py")
                  if "site-packages" not in path.relative_to(root).parts and path.is_file())


def _hash_fraction(purpose: str, relative_path: str) -> float:
    """A number in [0, 1) fixed by the path (SHA-256), one per ``purpose``."""
    digest = hashlib.sha256(f"{purpose}/{relative_path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_file(paths: Sequence[str], *, validation_fraction: float = 0.1,
                  max_files: int | None = None) -> tuple[list[str], list[str]]:
    """Splits files (not tokens) into training and validation, deterministically.

    A file is a validation file when the SHA-256 of ``"split/" + path`` (as a fraction
    of its range) is below ``validation_fraction``: its side depends on its own name
    only, not on the order of ``paths``, on the other files or on the machine. With
    ``max_files``, the files kept are the first ``max_files`` ranked by a second hash
    (of ``"sample/" + path``): a deterministic sample spread over the whole library.
    Should a side come out empty (a handful of files), the file nearest the threshold
    moves over, so that each side has one.

    Returns:
      ``(train, validation)``: two disjoint sorted lists (the order of the token
      stream) whose union is the kept files.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    if max_files is not None and max_files < 2:
        raise ValueError(f"max_files must be at least 2 (one file per split), got {max_files}")
    kept = sorted(set(paths))
    if max_files is not None:
        kept = sorted(sorted(kept, key=lambda p: _hash_fraction("sample", p))[:max_files])
    if len(kept) < 2:
        raise ValueError(f"need at least 2 files to split, got {len(kept)}")
    key = {p: _hash_fraction("split", p) for p in kept}
    validation = [p for p in kept if key[p] < validation_fraction]
    if not validation:
        validation = [min(kept, key=key.__getitem__)]
    elif len(validation) == len(kept):
        validation.remove(max(kept, key=key.__getitem__))
    chosen = set(validation)
    return [p for p in kept if p not in chosen], sorted(validation)


def read_sources(root: pathlib.Path, paths: Sequence[str]) -> list[str]:
    """The files' text (UTF-8; the few test files in other encodings get U+FFFD)."""
    return [(root / p).read_bytes().decode("utf-8", errors="replace") for p in paths]


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("the language-model demo needs the tokenizers package: "
                          "pip install 'jaxloss[demo]'") from e
    return tokenizers


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE (GPT-2's pre-tokenizer) with ``vocab_size`` entries, trained on
    ``texts``; :data:`END_OF_TEXT` is its id 0."""
    tk = _tokenizers()
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    trained: Tokenizer = tokenizer
    return trained


def load_tokenizer(path: pathlib.Path) -> Tokenizer:
    """A tokenizer saved by :func:`prepare_corpus`."""
    loaded: Tokenizer = _tokenizers().Tokenizer.from_file(str(path))
    return loaded


def encode_files(tokenizer: Tokenizer, texts: Sequence[str]) -> np.ndarray:
    """One int32 stream: each file's tokens followed by :data:`END_OF_TEXT`."""
    eot = tokenizer.token_to_id(END_OF_TEXT)
    pieces = []
    for encoding in tokenizer.encode_batch(list(texts)):
        pieces.append(np.asarray(encoding.ids, np.int32))
        pieces.append(np.asarray([eot], np.int32))
    return np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The tokenized data of a run and where it came from."""

    tokenizer: Tokenizer
    train: np.ndarray  # int32 token stream of the training files
    validation: np.ndarray  # int32 token stream of the validation files
    train_files: list[str]
    validation_files: list[str]
    train_bytes: int
    validation_bytes: int
    cached: bool  # True when read back from the cache
    seconds: float  # reading + tokenizer training + encoding (or loading the cache)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())


def prepare_corpus(cache_dir: pathlib.Path, *, vocab_size: int = 32768,
                   max_files: int | None = None, validation_fraction: float = 0.1,
                   root: pathlib.Path | None = None) -> Corpus:
    """Reads, splits and tokenizes the standard library, or loads the same from the cache.

    The BPE is trained on the training files only (all of them: 31 MB of source take a
    few seconds). The tokenizer (``tokenizer.json``) and the two token streams
    (``train.npy``, ``validation.npy``) are written to a folder under ``cache_dir``
    named by a hash of everything they depend on (the file list and sizes, the
    vocabulary size, the split), so a second run with the same settings skips all of it.
    """
    began = time.perf_counter()
    root = stdlib_root() if root is None else root
    train_files, validation_files = split_by_file(
        stdlib_sources(root), validation_fraction=validation_fraction, max_files=max_files)
    key = hashlib.sha256(json.dumps({
        "format": _CACHE_FORMAT, "python": sys.version, "vocab_size": vocab_size,
        "train": [(p, (root / p).stat().st_size) for p in train_files],
        "validation": [(p, (root / p).stat().st_size) for p in validation_files],
    }).encode("utf-8")).hexdigest()[:16]
    folder = cache_dir / f"stdlib-bpe{vocab_size}-{key}"
    files = [folder / name for name in ("tokenizer.json", "train.npy", "validation.npy",
                                        "meta.json")]
    if all(f.is_file() for f in files):
        meta = json.loads(files[3].read_text())
        return Corpus(load_tokenizer(files[0]), np.load(files[1]), np.load(files[2]),
                      train_files, validation_files, meta["train_bytes"],
                      meta["validation_bytes"], True, time.perf_counter() - began)

    train_texts = read_sources(root, train_files)
    validation_texts = read_sources(root, validation_files)
    tokenizer = train_tokenizer(train_texts, vocab_size)
    train = encode_files(tokenizer, train_texts)
    validation = encode_files(tokenizer, validation_texts)
    train_bytes = sum(len(t.encode("utf-8")) for t in train_texts)
    validation_bytes = sum(len(t.encode("utf-8")) for t in validation_texts)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(files[0]))
    np.save(files[1], train)
    np.save(files[2], validation)
    # Written last: its presence says the other three are complete.
    files[3].write_text(json.dumps({"train_bytes": train_bytes,
                                    "validation_bytes": validation_bytes}))
    return Corpus(tokenizer, train, validation, train_files, validation_files, train_bytes,
                  validation_bytes, False, time.perf_counter() - began)


def train_batches(tokens: np.ndarray, batch_size: int, seq_len: int,
                  seed: int) -> Callable[[int], np.ndarray]:
    """``batch(step) -> [batch_size, seq_len]`` windows at random offsets of the stream;
    the same ``(seed, step)`` always gives the same batch."""
    if len(tokens) <= seq_len:
        raise ValueError(f"the training stream has {len(tokens)} tokens, need more than "
                         f"seq_len = {seq_len}")

    def batch(step: int) -> np.ndarray:
        rng = np.random.default_rng((seed, step))
        starts = rng.integers(0, len(tokens) - seq_len + 1, size=batch_size)
        return np.stack([tokens[s:s + seq_len] for s in starts])

    return batch


def validation_windows(tokens: np.ndarray, seq_len: int, windows: int) -> np.ndarray:
    """``[k, seq_len]`` non-overlapping windows spread evenly over the validation stream
    (``k = windows``, or fewer when the stream is short)."""
    available = len(tokens) // seq_len
    if available < 1:
        raise ValueError(f"the validation stream has {len(tokens)} tokens, need at least "
                         f"seq_len = {seq_len}")
    picks = np.unique(np.linspace(0, available - 1, min(windows, available)).astype(np.int64))
    return np.stack([tokens[i * seq_len:(i + 1) * seq_len] for i in picks])


def unigram_perplexity(train_tokens: np.ndarray, targets: np.ndarray, vocab_size: int) -> float:
    r"""Perplexity of ``targets`` under the unigram model of ``train_tokens``.

    .. math::
      p(v) = \frac{c_v + 1}{N + V}, \qquad
      \mathrm{PPL} = \exp\Bigl(-\frac{1}{M}\sum_{m=1}^{M} \log p(t_m)\Bigr)

    with :math:`c_v` the count of token :math:`v` among the :math:`N` training tokens
    (add-one smoothing, so an unseen token has a probability) and :math:`t` the
    :math:`M` target tokens; entries of ``targets`` equal to :data:`IGNORE_INDEX` are
    skipped. The baseline that a language model must beat by using context.
    """
    counts = np.bincount(np.asarray(train_tokens).ravel(), minlength=vocab_size)
    if counts.shape[0] != vocab_size:
        raise ValueError(f"train_tokens has ids >= vocab_size = {vocab_size}")
    log_p = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)
    kept = np.asarray(targets).ravel()
    kept = kept[kept != IGNORE_INDEX]
    if kept.size == 0:
        raise ValueError("no target tokens")
    return float(np.exp(-np.mean(log_p[kept])))


# ---------------------------------------------------------------------------------
# The model.


class Block(nnx.Module):
    """A pre-LayerNorm Transformer block: causal self-attention, then a GELU MLP."""

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int, *, rngs: nnx.Rngs) -> None:
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.qkv = nnx.Linear(d_model, 3 * d_model, rngs=rngs)
        self.proj = nnx.Linear(d_model, d_model, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.up = nnx.Linear(d_model, mlp_ratio * d_model, rngs=rngs)
        self.down = nnx.Linear(mlp_ratio * d_model, d_model, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(self.norm1(x)), 3, axis=-1)
        heads = (b, t, self.num_heads, d // self.num_heads)
        attended = jax.nn.dot_product_attention(q.reshape(heads), k.reshape(heads),
                                                v.reshape(heads), is_causal=True)
        x = x + self.proj(attended.reshape(b, t, d))
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class TransformerLM(nnx.Module):
    """A decoder-only Transformer whose head is left to the loss.

    ``model(tokens)`` returns the last hidden state ``[B, T, D]`` (after the final
    LayerNorm); ``model.unembed`` is the ``[D, V]`` weight that maps it to logits. The
    training loss takes both, so the ``[B*T, V]`` logits are never formed; only
    sampling forms the logits of one position.
    """

    def __init__(self, vocab_size: int, *, seq_len: int, d_model: int, num_heads: int,
                 num_layers: int, mlp_ratio: int = 4, rngs: nnx.Rngs) -> None:
        self.seq_len = seq_len
        self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
        self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (seq_len, d_model)))
        self.blocks = nnx.List([Block(d_model, num_heads, mlp_ratio, rngs=rngs)
                                for _ in range(num_layers)])
        self.norm = nnx.LayerNorm(d_model, rngs=rngs)
        self.unembed = nnx.Param(
            jax.random.normal(rngs.params(), (d_model, vocab_size)) / math.sqrt(d_model))

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens) + self.position[...][: tokens.shape[-1]]
        for block in self.blocks:
            x = block(x)
        hidden: jax.Array = self.norm(x)
        return hidden


def build_model(config: LMConfig, vocab_size: int) -> TransformerLM:
    """The config's model with ``vocab_size`` entries, initialized from ``config.seed``."""
    return TransformerLM(vocab_size, seq_len=config.seq_len, d_model=config.d_model,
                         num_heads=config.num_heads, num_layers=config.num_layers,
                         mlp_ratio=config.mlp_ratio, rngs=nnx.Rngs(config.seed))


def count_params(model: nnx.Module) -> int:
    """The number of trainable parameters."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ---------------------------------------------------------------------------------
# The two losses: fused (jaxloss) and materialized (optax on hidden @ weight).

LossOut = tuple[jax.Array, dict[str, jax.Array]]


def fused_loss(hidden: jax.Array, weight: jax.Array, labels: jax.Array) -> LossOut:
    """The mean LM loss with :data:`LOSS_OPTIONS`, by
    :func:`jaxloss.linear_softmax_cross_entropy`: ``[N, V]`` is never held.

    Returns:
      ``(loss, metrics)``; metrics hold ``ce`` (the mean cross-entropy without the
      z-term: its exponential is the perplexity) and ``accuracy`` (the share of
      targets whose logit is the largest), from the loss's auxiliary outputs.
    """
    loss, aux = jaxloss.linear_softmax_cross_entropy(
        hidden, weight, labels, ignore_index=IGNORE_INDEX, reduction="mean", return_aux=True,
        **LOSS_OPTIONS)
    kept = jnp.maximum(jnp.sum(labels != IGNORE_INDEX), 1)
    ce = loss - jnp.sum(aux.z_loss) / kept
    return loss, {"ce": ce, "accuracy": jnp.sum(aux.correct) / kept}


def materialized_loss(hidden: jax.Array, weight: jax.Array, labels: jax.Array) -> LossOut:
    """The same loss with the logits formed: optax's integer cross-entropy of the
    soft-capped ``hidden @ weight`` plus the z-term, written out with jnp."""
    softcap, z_loss = LOSS_OPTIONS["softcap"], LOSS_OPTIONS["z_loss"]
    logits = hidden @ weight
    logits = softcap * jnp.tanh(logits / softcap)
    kept = labels != IGNORE_INDEX
    safe = jnp.where(kept, labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    lse = jax.nn.logsumexp(logits, axis=-1)
    count = jnp.maximum(jnp.sum(kept), 1)
    ce_mean = jnp.sum(jnp.where(kept, ce, 0.0)) / count
    loss = ce_mean + jnp.sum(jnp.where(kept, z_loss * lse**2, 0.0)) / count
    correct = jnp.argmax(logits, axis=-1) == safe
    return loss, {"ce": ce_mean, "accuracy": jnp.sum(correct & kept) / count}


LossFn = Callable[[jax.Array, jax.Array, jax.Array], LossOut]


def lm_objective(model: TransformerLM, tokens: jax.Array, loss: LossFn = fused_loss) -> LossOut:
    """Causal LM loss of a ``[B, T]`` batch: position t predicts token t + 1."""
    labels = jaxloss.shift_labels(tokens, ignore_index=IGNORE_INDEX)
    hidden = model(tokens)
    return loss(hidden.reshape(-1, hidden.shape[-1]), model.unembed[...], labels.reshape(-1))


def make_optimizer(config: LMConfig) -> optax.GradientTransformation:
    """AdamW with linear warm-up and cosine decay to a tenth, global-norm clipped at 1."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, min(config.warmup_steps, max(config.steps - 1, 1)),
        max(config.steps, 2), end_value=config.learning_rate / 10)
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=0.01))


Step = Callable[[Any, Any, jax.Array], tuple[Any, Any, dict[str, jax.Array]]]


def make_train_step(graphdef: Any, optimizer: optax.GradientTransformation,
                    loss: LossFn = fused_loss) -> Step:
    """``step(params, opt_state, tokens) -> (params, opt_state, metrics)``, pure.

    The model is split once (``nnx.split``) into its graph definition and parameters;
    the step merges them, differentiates :func:`lm_objective` and applies the optimizer.
    Being a plain function of arrays, it is jitted and lowered like any JAX function,
    which lets ``compile().memory_analysis()`` measure the whole step.
    """

    def step(params: Any, opt_state: Any, tokens: jax.Array) -> tuple[Any, Any,
                                                                      dict[str, jax.Array]]:
        def objective(params: Any) -> LossOut:
            return lm_objective(nnx.merge(graphdef, params), tokens, loss)

        (value, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": value, **metrics}

    return step


def compile_step(step: Step, params: Any, opt_state: Any, tokens: jax.Array) -> Any:
    """The step jitted (parameters and optimizer state donated), lowered and compiled
    for these shapes."""
    return jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, tokens).compile()


def temp_bytes(compiled: Any) -> int:
    """The temporary memory XLA assigned to a compiled function."""
    return int(compiled.memory_analysis().temp_size_in_bytes)


def step_footprint(compiled: Any) -> int:
    """The bytes a compiled step needs on its device: its arguments (parameters,
    optimizer state, batch), its outputs less those that reuse a donated argument's
    buffer, and its temporaries (XLA's ``memory_analysis``)."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)


def largest_batch(config: LMConfig, vocab_size: int, loss: LossFn, budget_bytes: int, *,
                  limit: int = 1 << 16) -> tuple[int, int]:
    """The largest batch (sequences of ``config.seq_len`` tokens, at most ``limit``)
    whose whole compiled train step fits in ``budget_bytes`` by
    :func:`step_footprint`, and that footprint; ``(0, footprint of one)`` when none
    does. Compiles only (doubling, then bisection), for JAX's default backend: XLA
    assigns buffers per backend, so a GPU's answer comes from a run on the GPU."""
    graphdef, params = nnx.split(build_model(config, vocab_size))
    optimizer = make_optimizer(config)
    opt_state = optimizer.init(params)
    step = jax.jit(make_train_step(graphdef, optimizer, loss), donate_argnums=(0, 1))

    def footprint(batch: int) -> int:
        tokens = jax.ShapeDtypeStruct((batch, config.seq_len), jnp.int32)
        return step_footprint(step.lower(params, opt_state, tokens).compile())

    return bisect_largest(footprint, budget_bytes, limit)


def bisect_largest(footprint: Callable[[int], int], budget: int,
                   limit: int) -> tuple[int, int]:
    """The largest ``b`` in ``[1, limit]`` with ``footprint(b) <= budget`` for a
    footprint that grows with ``b``, and that footprint (``(0, footprint(1))`` when none
    fits): doubling from 1, then bisection, about ``2 log2(b)`` calls."""
    low, high = 0, 1
    sizes = {1: footprint(1)}
    while sizes[high] <= budget and high < limit:
        low, high = high, min(2 * high, limit)
        sizes[high] = footprint(high)
    if sizes[high] <= budget:
        return high, sizes[high]
    while high - low > 1:  # low fits (or is 0), high does not
        middle = (low + high) // 2
        sizes[middle] = footprint(middle)
        low, high = (middle, high) if sizes[middle] <= budget else (low, middle)
    return low, sizes[low] if low else sizes[1]


def make_eval_step(graphdef: Any) -> Callable[[Any, jax.Array], dict[str, jax.Array]]:
    """``eval(params, tokens) -> {"loss", "ce", "accuracy"}``, jitted, fused loss."""

    @jax.jit
    def evaluate(params: Any, tokens: jax.Array) -> dict[str, jax.Array]:
        value, metrics = lm_objective(nnx.merge(graphdef, params), tokens)
        return {"loss": value, **metrics}

    return evaluate


def evaluate(eval_step: Callable[[Any, jax.Array], dict[str, jax.Array]], params: Any,
             windows: np.ndarray, batch_size: int) -> dict[str, float]:
    """Metrics over all validation windows, each batch weighted by its target count
    (every window has ``seq_len - 1`` targets, so by its number of windows)."""
    totals: dict[str, float] = {}
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        for name, value in eval_step(params, jnp.asarray(batch)).items():
            totals[name] = totals.get(name, 0.0) + float(value) * len(batch)
    return {name: total / len(windows) for name, total in totals.items()}


def greedy_sample(graphdef: Any, params: Any, tokenizer: Tokenizer, prompt: str,
                  num_tokens: int, seq_len: int) -> str:
    """The prompt continued by ``num_tokens`` greedy (argmax) tokens.

    Each step runs the model on the last ``seq_len`` tokens (right-padded to a fixed
    shape, so one compilation serves every step) and forms the logits of one position
    only. The soft-cap is monotonic: it does not change the argmax.
    """

    @jax.jit
    def next_token(params: Any, window: jax.Array, position: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, params)
        hidden = model(window[None])[0]
        return jnp.argmax(hidden[position] @ model.unembed[...])

    ids = list(tokenizer.encode(prompt).ids)
    for _ in range(num_tokens):
        window = ids[-seq_len:]
        padded = np.zeros((seq_len,), np.int32)
        padded[:len(window)] = window
        ids.append(int(next_token(params, jnp.asarray(padded), jnp.asarray(len(window) - 1))))
    decoded: str = tokenizer.decode(ids)
    return decoded


# ---------------------------------------------------------------------------------
# The run.


class ThresholdError(RuntimeError):
    """A figure the demo promises did not hold."""


def run(config: LMConfig, out: pathlib.Path, *, log: Callable[[str], None] = print,
        check: bool = True) -> dict[str, Any]:
    """Prepares the data, trains, evaluates, measures, samples and plots.

    Args:
      config: the run's settings.
      out: folder for the cache (``out/lm-cache``) and the plot (``out/lm_loss.png``).
      log: where the progress and the report lines go.
      check: raise :class:`ThresholdError` (after the report) when the validation
        perplexity is above half the unigram perplexity, or the fused step's temporary
        memory above a quarter of the materialized step's.

    Returns:
      The figures, the loss history, the sample and the plot's path.
    """
    began = time.perf_counter()
    corpus = prepare_corpus(out / "lm-cache", vocab_size=config.vocab_size,
                            max_files=config.max_files,
                            validation_fraction=config.validation_fraction)
    vocab = corpus.vocab_size
    log(f"data: {len(corpus.train_files)} training files ({corpus.train_bytes / 1e6:.1f} MB, "
        f"{len(corpus.train):,} tokens), {len(corpus.validation_files)} validation files "
        f"({corpus.validation_bytes / 1e6:.1f} MB, {len(corpus.validation):,} tokens) from "
        f"Python {sys.version.split()[0]}'s standard library")
    log(f"tokenizer: byte-level BPE, V = {vocab}, trained on all training files; "
        + (f"loaded from the cache in {corpus.seconds:.1f} s" if corpus.cached
           else f"trained and encoded in {corpus.seconds:.1f} s (cached for the next run)"))

    model = build_model(config, vocab)
    graphdef, params = nnx.split(model)
    optimizer = make_optimizer(config)
    opt_state = optimizer.init(params)
    batches = train_batches(corpus.train, config.batch_size, config.seq_len, config.seed)
    windows = validation_windows(corpus.validation, config.seq_len, config.eval_windows)
    targets = np.asarray(jaxloss.shift_labels(jnp.asarray(windows), ignore_index=IGNORE_INDEX))
    unigram = unigram_perplexity(corpus.train, targets, vocab)
    log(f"model: {config.num_layers} layers, d_model {config.d_model}, {config.num_heads} heads, "
        f"context {config.seq_len}, {count_params(model) / 1e6:.2f} M parameters "
        f"({config.d_model * vocab / 1e6:.2f} M in the [D, V] unembedding)")

    example = jnp.asarray(batches(0))
    compile_began = time.perf_counter()
    fused_step = compile_step(make_train_step(graphdef, optimizer, fused_loss),
                              params, opt_state, example)
    materialized_step = compile_step(make_train_step(graphdef, optimizer, materialized_loss),
                                     params, opt_state, example)
    fused_mib, materialized_mib = (temp_bytes(c) / 2**20
                                   for c in (fused_step, materialized_step))
    del materialized_step  # only compiled, to be measured
    compile_seconds = time.perf_counter() - compile_began
    eval_step = make_eval_step(graphdef)

    history: list[dict[str, float]] = []
    train_seconds = 0.0
    for step in range(config.steps):
        tokens = jnp.asarray(batches(step))
        tick = time.perf_counter()
        params, opt_state, metrics = fused_step(params, opt_state, tokens)
        loss = float(metrics["loss"])  # waits for the step
        train_seconds += time.perf_counter() - tick
        if not math.isfinite(loss):
            raise ThresholdError(f"the training loss is {loss} at step {step + 1}")
        record = {"step": float(step + 1), "train_loss": loss, "train_ce": float(metrics["ce"])}
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            evaluated = evaluate(eval_step, params, windows, config.batch_size)
            record |= {f"val_{k}": v for k, v in evaluated.items()}
            log(f"step {step + 1:4d}/{config.steps}  train loss {loss:.3f}  "
                f"val loss {evaluated['loss']:.3f}  val accuracy {evaluated['accuracy']:.3f}  "
                f"{(step + 1) * example.size / train_seconds:,.0f} tokens/s")
        history.append(record)

    final = history[-1]
    # The mean train loss of the last tenth of the steps (one batch is noisy).
    tail = history[-max(1, config.steps // 10):]
    train_loss = float(np.mean([h["train_loss"] for h in tail]))
    val_ppl = math.exp(final["val_ce"])
    tokens_per_second = config.steps * example.size / train_seconds
    sample = greedy_sample(graphdef, params, corpus.tokenizer, config.prompt,
                           config.sample_tokens, config.seq_len)
    plot = plot_losses(history, out / "lm_loss.png", unigram_perplexity=unigram)
    result = {
        "vocab_size": vocab, "train_loss": train_loss, "val_loss": final["val_loss"],
        "val_ce": final["val_ce"], "val_accuracy": final["val_accuracy"],
        "val_perplexity": val_ppl, "unigram_perplexity": unigram,
        "val_targets": int(np.sum(targets != IGNORE_INDEX)),
        "tokens_per_second": tokens_per_second, "train_seconds": train_seconds,
        "compile_seconds": compile_seconds, "data_seconds": corpus.seconds,
        "cached": corpus.cached, "fused_temp_mib": fused_mib,
        "materialized_temp_mib": materialized_mib,
        "memory_ratio": fused_mib / materialized_mib, "sample": sample, "plot": plot,
        "history": history, "seconds": time.perf_counter() - began,
        "model": nnx.merge(graphdef, params), "tokenizer": corpus.tokenizer,
    }
    report(result, config, log)
    if check:
        check_thresholds(result)
    return result


def report(result: dict[str, Any], config: LMConfig, log: Callable[[str], None]) -> None:
    """The figures, one per line, ``name: value`` (what the tests parse)."""
    tokens = config.batch_size * config.seq_len
    log("")
    log(f"train loss: {result['train_loss']:.4f}  (mean of the last {max(1, config.steps // 10)}"
        f" steps; cross-entropy + z-loss)")
    log(f"validation loss: {result['val_loss']:.4f}  (cross-entropy {result['val_ce']:.4f}, "
        f"token accuracy {result['val_accuracy']:.3f}, {result['val_targets']:,} targets)")
    log(f"validation perplexity: {result['val_perplexity']:.1f}")
    log(f"unigram perplexity: {result['unigram_perplexity']:.1f}  (train-token frequencies, "
        f"add-one smoothing, same validation targets; ratio "
        f"{result['val_perplexity'] / result['unigram_perplexity']:.3f})")
    log(f"training: {result['tokens_per_second']:,.0f} tokens/s  ({config.steps} steps of "
        f"{config.batch_size} x {config.seq_len} tokens in {result['train_seconds']:.1f} s)")
    log(f"train step temp memory: fused {result['fused_temp_mib']:.1f} MiB, materialized "
        f"{result['materialized_temp_mib']:.1f} MiB, ratio {result['memory_ratio']:.3f}  "
        f"(batch {tokens} tokens, V = {result['vocab_size']}; XLA memory_analysis)")
    log(f"sample: {result['sample']!r}")
    log(f"plot: {result['plot']}")
    log(f"lm done in {result['seconds']:.1f} s")


@dataclasses.dataclass(frozen=True)
class Threshold:
    """One figure the demo promises: ``value`` (a ratio) must be at most ``limit``;
    ``problem`` says how it failed."""

    figure: str
    value: float
    limit: float
    problem: str

    @property
    def passed(self) -> bool:
        return self.value <= self.limit  # NaN fails

    def line(self) -> str:
        """``figure: value (at most limit): ok`` or ``... FAIL``."""
        return (f"{self.figure}: {self.value:.3f} (at most {self.limit:g}): "
                + ("ok" if self.passed else "FAIL"))


def thresholds(result: dict[str, Any]) -> list[Threshold]:
    """The figures the demo promises, each with its limit: the validation perplexity at
    most half the unigram perplexity, the fused step's temporary memory at most a
    quarter of the materialized step's."""
    ppl, unigram = result["val_perplexity"], result["unigram_perplexity"]
    fused, materialized = result["fused_temp_mib"], result["materialized_temp_mib"]
    return [
        Threshold("validation perplexity / unigram perplexity", ppl / unigram, 0.5,
                  f"validation perplexity {ppl:.1f} is above half the unigram perplexity "
                  f"({unigram / 2:.1f})"),
        Threshold("fused / materialized train step temp memory", result["memory_ratio"], 0.25,
                  f"the fused step's temporary memory ({fused:.1f} MiB) is above a quarter "
                  f"of the materialized step's ({materialized:.1f} MiB)"),
    ]


def check_thresholds(result: dict[str, Any]) -> None:
    """Raises :class:`ThresholdError` naming each promised figure that did not hold."""
    problems = [t.problem for t in thresholds(result) if not t.passed]
    if problems:
        raise ThresholdError("; ".join(problems))


def plot_losses(history: Sequence[dict[str, float]], path: pathlib.Path, *,
                unigram_perplexity: float | None = None) -> pathlib.Path:
    """Train loss per step and validation loss at each evaluation, as a PNG; with
    ``unigram_perplexity``, the unigram model's validation cross-entropy as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    evals = [h for h in history if "val_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(steps, [h["train_loss"] for h in history], lw=0.8, alpha=0.8, label="train")
    ax.plot([h["step"] for h in evals], [h["val_loss"] for h in evals], "o-", label="validation")
    if unigram_perplexity is not None:
        ax.axhline(math.log(unigram_perplexity), color="gray", ls="--", lw=1,
                   label="unigram model (validation)")
    ax.set(xlabel="step", ylabel="loss (cross-entropy + z-loss)",
           title="Transformer LM on the Python standard library")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
