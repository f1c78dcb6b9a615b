"""One description per public name: the list the others are checked against.

``tests/test_registry.py`` proves that ``jaxloss.__all__``, the cases of ``jaxloss
check``, the benchmark's rows and the README's tables agree with :data:`ENTRIES`; the
README tables are rendered from it (:func:`readme_tables`). Adding a loss means adding
its line here, and the test then names every list it is still missing from.

Columns: ``names`` (the first is the function, the rest are aliases of it, or, when
listed in ``deprecated``, functions that warn and call it), ``module``
(where it is defined), ``family`` (its README table), ``call`` (how the README shows
its options), ``optax``, ``torch``, ``keras`` (the nearest equivalent there, or "—"),
``notes`` (what differs), ``checked`` (has ``jaxloss check`` cases), ``benchmark`` (has
rows in ``benchmarks/run.py``), ``domain`` (what ``jaxloss.checked`` checks of the values).

``domain`` is a tuple of rules ``"<argument>: <kind>"``, each optionally followed by
``(<arguments of the kind>)`` and ``if <flag>`` / ``if not <flag>`` (a rule that holds only
under a boolean option); the kinds are listed in ``jaxloss/_checked.py`` (:data:`KINDS`).
Every floating input is checked for NaN besides; ``()`` declares that nothing else is
required. Every loss (an entry with ``checked``) declares one; the default ``None`` means
"not declared" and fails ``tests/test_checked.py``. For a factory
(``make_fenchel_young_loss``) the rules are those of the loss it makes.
"""

from __future__ import annotations

import dataclasses

NONE = "—"

FAMILIES = {
    "regression": "Regression",
    "classification": "Classification",
    "divergence": "Divergences",
    "margin": "Margin and ranking",
    "structured": "Sparse, structured and sequence outputs",
    "segmentation": "Segmentation",
    "metric": "Similarity, contrastive and metric learning",
    "utility": "Utilities",
}


@dataclasses.dataclass(frozen=True)
class Entry:
    names: tuple[str, ...]
    module: str
    family: str
    call: str
    optax: str = NONE
    torch: str = NONE
    keras: str = NONE
    notes: str = ""
    checked: bool = True
    benchmark: bool = False
    domain: tuple[str, ...] | None = None
    deprecated: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.names[0]


def _e(names: str, module: str, family: str, call: str, optax: str = NONE,
       torch: str = NONE, keras: str = NONE, notes: str = "", *, checked: bool = True,
       benchmark: bool = False, domain: tuple[str, ...] | None = None,
       deprecated: tuple[str, ...] = ()) -> Entry:
    return Entry(tuple(n.strip() for n in names.split(",")), module, family, call, optax,
                 torch, keras, notes, checked, benchmark, domain, deprecated)


SAME = "same name, same values"

# The numeric options of the softmax cross-entropies (checked when given as arrays too).
_CE_OPTIONS = ("label_smoothing: probability", "softcap: positive", "temperature: positive",
               "z_loss: non_negative")
_CTC = ("logits: logits", "labels: class_ids(logits, paddings=label_paddings)",
        "label_paddings: paddings", "log_epsilon: log_probability")

# fmt: off
ENTRIES: tuple[Entry, ...] = (
    # Regression.
    _e("squared_error", "regression", "regression", "`squared_error`", SAME,
       '`MSELoss(reduction="none")`', benchmark=True, domain=()),
    _e("l2_loss", "regression", "regression", "`l2_loss`", SAME,
       'half of `MSELoss(reduction="none")`', benchmark=True, domain=()),
    _e("huber_loss", "regression", "regression", "`huber_loss(delta=)`", SAME,
       "`HuberLoss(delta=)`", "`Huber(delta=)`", benchmark=True, domain=("delta: positive",)),
    _e("mean_squared_error, mse", "regression", "regression",
       "`mean_squared_error`, `mse`", NONE, "`MSELoss()`", "`MeanSquaredError()`",
       "a mean by definition (over `axis=`)", domain=()),
    _e("mean_absolute_error, mae", "regression", "regression",
       "`mean_absolute_error`, `mae`", NONE, "`L1Loss()`", "`MeanAbsoluteError()`",
       "a mean by definition (over `axis=`)", domain=()),
    _e("log_cosh", "similarity", "regression", "`log_cosh`", SAME, NONE, "`LogCosh()`",
       "exact near 0; no overflow past ±89 in float32", domain=()),
    _e("smooth_l1_loss", "regression", "regression", "`smooth_l1_loss(beta=)`", NONE,
       "`SmoothL1Loss(beta=)`", NONE, "`huber_loss / beta`; `beta=0` is L1",
       domain=("beta: non_negative",)),
    _e("poisson_nll_loss", "regression", "regression",
       "`poisson_nll_loss(log_input=, full=, eps=)`", NONE, "`PoissonNLLLoss`", "`Poisson()`",
       domain=("targets: non_negative", "input: non_negative if not log_input",
               "eps: non_negative")),
    _e("gaussian_nll_loss", "regression", "regression",
       "`gaussian_nll_loss(predictions, targets, variance, full=, eps=)`", NONE,
       "`GaussianNLLLoss`", NONE,
       "PyTorch's variance shapes; the gradient passes the `eps` clamp, as PyTorch's",
       domain=("variance: non_negative", "eps: non_negative")),
    # Classification.
    _e("sigmoid_binary_cross_entropy", "classification", "classification",
       "`sigmoid_binary_cross_entropy(pos_weight=, label_smoothing=)`", SAME,
       "`BCEWithLogitsLoss(pos_weight=)`",
       "`BinaryCrossentropy(from_logits=True, label_smoothing=)`", benchmark=True,
       domain=("labels: probability", "pos_weight: non_negative",
               "label_smoothing: probability")),
    _e("binary_cross_entropy", "classification", "classification", "`binary_cross_entropy`",
       NONE, "`BCELoss()`", "`BinaryCrossentropy()`",
       "exact logs; PyTorch clamps the log at −100, Keras clips p at 1e-7",
       domain=("probabilities: probability", "labels: probability")),
    _e("softmax_cross_entropy", "classification", "classification",
       "`softmax_cross_entropy(label_smoothing=, softcap=, temperature=, z_loss=)`", SAME,
       "`CrossEntropyLoss()` with probability targets",
       "`CategoricalCrossentropy(from_logits=True)`", "0, not NaN, at −inf logits",
       benchmark=True, domain=("logits: logits", "labels: non_negative", *_CE_OPTIONS)),
    _e("softmax_cross_entropy_with_integer_labels", "classification", "classification",
       "`softmax_cross_entropy_with_integer_labels(class_weights=, ignore_index=, "
       "label_smoothing=, softcap=, temperature=, z_loss=, return_aux=)`", SAME,
       "`CrossEntropyLoss(weight=, ignore_index=, label_smoothing=)`",
       "`SparseCategoricalCrossentropy(from_logits=True, ignore_class=)`; Liger's "
       "`cross_entropy(softcap=, lse_square_scale=)`", benchmark=True,
       domain=("logits: logits", "labels: class_ids(logits, axis)",
               "class_weights: non_negative", *_CE_OPTIONS, "axis_name: unsupported")),
    _e("categorical_cross_entropy", "classification", "classification",
       "`categorical_cross_entropy`", NONE, NONE, "`CategoricalCrossentropy()`",
       "on probabilities; Keras clips at 1e-7",
       domain=("probabilities: probability", "labels: non_negative")),
    _e("safe_softmax_cross_entropy", "focal", "classification",
       "`safe_softmax_cross_entropy`", SAME,
       "`CrossEntropyLoss()` with probability targets",
       "`CategoricalCrossentropy(from_logits=True)`",
       domain=("logits: logits", "labels: non_negative")),
    _e("nll_loss", "classification", "classification",
       "`nll_loss(log_probs, labels, class_weights=, ignore_index=)`", NONE, "`NLLLoss`",
       NONE, "class axis last; `\"mean\"` is PyTorch's weighted mean",
       domain=("log_probs: log_probability", "labels: class_ids(log_probs)",
               "class_weights: non_negative")),
    _e("sigmoid_focal_loss", "focal", "classification", "`sigmoid_focal_loss(alpha=, gamma=)`",
       SAME, "`torchvision.ops.sigmoid_focal_loss`", "`BinaryFocalCrossentropy()`",
       domain=("labels: probability", "alpha: probability", "gamma: non_negative")),
    _e("poly_loss_cross_entropy", "focal", "classification",
       "`poly_loss_cross_entropy(epsilon=)`", SAME, NONE, NONE,
       "finite at −inf logits and empty rows", domain=("logits: logits", "labels: non_negative")),
    _e("soft_margin_loss", "classification", "classification", "`soft_margin_loss`", NONE,
       "`SoftMarginLoss`", NONE, "`log(1 + exp(−y x))`, finite at any logit",
       domain=("targets: signs",)),
    _e("multilabel_soft_margin_loss", "classification", "classification",
       "`multilabel_soft_margin_loss(class_weights=)`", NONE,
       "`MultiLabelSoftMarginLoss(weight=)`", NONE,
       domain=("labels: probability", "class_weights: non_negative")),
    _e("smooth_labels", "smoothing", "classification", "`smooth_labels(labels, alpha)`",
       "`optax.smooth_labels`", "the `label_smoothing=` option",
       "the `label_smoothing=` option", domain=("labels: probability", "alpha: probability")),
    _e("linear_softmax_cross_entropy", "large_vocab", "classification",
       "`linear_softmax_cross_entropy(hidden, weight, labels, bias=, chunk_size=, "
       "ignore_index=, label_smoothing=, softcap=, temperature=, z_loss=, return_aux=)`",
       "— (on `hidden @ weight`)", "— (Liger's fused linear CE, Cut Cross-Entropy)",
       "Liger: `softcap=`, `lse_square_scale=` (our `z_loss=`), `return_z_loss=` and "
       "`return_token_accuracy=` (our `return_aux=`); Cut Cross-Entropy: `softcap=`",
       "never holds the `[N, V]` logits", benchmark=True,
       domain=("hidden: finite", "weight: finite", "labels: class_ids(weight)",
               "bias: logits", *_CE_OPTIONS, "axis_name: unsupported")),
    _e("linear_log_probs", "large_vocab", "classification",
       "`linear_log_probs(hidden, weight, labels, bias=, softcap=, temperature=, "
       "return_entropy=, ignore_index=, chunk_size=)`", NONE, NONE,
       "Liger's fused linear RL losses (per-token log-probs, entropy)",
       "per-token `log p(label)` and entropy, differentiable, never holds `[N, V]`",
       domain=("hidden: finite", "weight: finite", "labels: class_ids(weight)",
               "bias: logits", "softcap: positive", "temperature: positive")),
    _e("CrossEntropyAux", "_lm_head", "utility", "`CrossEntropyAux`", checked=False),
    _e("shift_labels", "large_vocab", "classification",
       "`shift_labels(tokens, ignore_index=, where=)`", NONE,
       "— (`labels[..., 1:]` by hand)", NONE,
       "causal-LM labels: position t predicts token t + 1; Cut Cross-Entropy's `shift`",
       checked=False),
    # Divergences.
    _e("kl_divergence", "divergence", "divergence", "`kl_divergence`", SAME,
       '`KLDivLoss(reduction="none")` summed over the class axis',
       "`KLDivergence()` (without its clipping)", "0 gradient, not NaN, at a 0 target",
       domain=("log_predictions: log_probability", "targets: probability")),
    _e("kl_divergence_with_log_targets", "divergence", "divergence",
       "`kl_divergence_with_log_targets`", SAME, "`KLDivLoss(log_target=True)`", NONE,
       "0, not NaN, at a −inf log target",
       domain=("log_predictions: log_probability",
               "log_targets: log_probability")),
    _e("generalized_kl_divergence, convex_kl_divergence", "divergence", "divergence",
       "`generalized_kl_divergence` (`convex_kl_divergence`)", SAME,
       domain=("log_predictions: logits", "targets: non_negative"),
       deprecated=("convex_kl_divergence",)),
    # Margin and ranking.
    _e("hinge_loss", "margin", "margin", "`hinge_loss`", SAME, NONE, "`Hinge()`",
       domain=("targets: signs",)),
    _e("perceptron_loss", "margin", "margin", "`perceptron_loss`", SAME,
       domain=("targets: signs",)),
    _e("multiclass_hinge_loss", "margin", "margin", "`multiclass_hinge_loss`", SAME,
       "— (`MultiMarginLoss` sums over classes)", "≈ `CategoricalHinge()`",
       "exactly 0 where optax leaves ~2e-7", domain=("labels: class_ids(scores)",)),
    _e("multiclass_perceptron_loss", "margin", "margin", "`multiclass_perceptron_loss`", SAME,
       domain=("labels: class_ids(scores)",)),
    _e("multi_margin_loss", "margin", "margin",
       "`multi_margin_loss(p=, margin=, class_weights=)`", NONE, "`MultiMarginLoss`", NONE,
       "class axis last", domain=("labels: class_ids(scores)", "class_weights: non_negative")),
    _e("multilabel_margin_loss", "margin", "margin", "`multilabel_margin_loss`", NONE,
       "`MultiLabelMarginLoss`", NONE, "targets padded with −1, as in PyTorch",
       domain=("targets: class_lists(scores)",)),
    _e("margin_ranking_loss", "margin", "margin", "`margin_ranking_loss(margin=)`", NONE,
       "`MarginRankingLoss`", domain=("targets: signs",)),
    _e("hinge_embedding_loss", "margin", "margin", "`hinge_embedding_loss(margin=)`", NONE,
       "`HingeEmbeddingLoss`", domain=()),
    _e("ranking_softmax_loss", "ranking", "margin",
       "`ranking_softmax_loss(where=, weights=, reduce_fn=)`", SAME,
       "`CrossEntropyLoss()` per list with probability targets", NONE,
       "finite at ±3e38 and −inf logits, where optax gives NaN",
       domain=("logits: logits", "labels: non_negative", "weights: non_negative")),
    # Sparse, structured and sequence outputs.
    _e("sparsemax_loss", "sparsemax", "structured", "`sparsemax_loss`", SAME, NONE, NONE,
       "exact gradient near 3e38", domain=()),
    _e("multiclass_sparsemax_loss", "sparsemax", "structured", "`multiclass_sparsemax_loss`",
       SAME, domain=("labels: class_ids(scores)",)),
    _e("make_fenchel_young_loss", "fenchel_young", "structured",
       "`make_fenchel_young_loss(max_fun, shift_equivariant=)`", SAME, NONE, NONE,
       "extra arguments reach `max_fun` (optax drops them); finite at −inf scores",
       domain=("scores: logits",)),
    _e("ctc_loss", "sequence", "structured",
       "`ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=, "
       "zero_infinity=)`", SAME, '`CTCLoss(reduction="none", zero_infinity=)`', "`CTC()`",
       "gradient from the alpha–beta recursion (a custom rule); finite at a −inf class, "
       "where optax gives NaN", benchmark=True, domain=_CTC),
    _e("ctc_loss_with_forward_probs", "sequence", "structured",
       "`ctc_loss_with_forward_probs`", SAME, domain=_CTC),
    # Segmentation.
    _e("dice_loss", "dice", "segmentation", "`dice_loss(class_weights=, smooth=, alpha=, "
       "beta=)`", SAME, NONE, "`Dice()` (no smooth/alpha/beta)",
       "0, not NaN, for an empty class at `smooth=0`",
       domain=("predictions: logits if apply_softmax",
               "predictions: probability if not apply_softmax", "targets: probability",
               "class_weights: non_negative", "smooth: non_negative", "alpha: non_negative",
               "beta: non_negative")),
    _e("binary_dice_loss", "dice", "segmentation", "`binary_dice_loss`", SAME, NONE, NONE,
       "0, not NaN, for an empty mask at `smooth=0`",
       domain=("predictions: probability if not apply_sigmoid", "targets: probability",
               "smooth: non_negative")),
    _e("multiclass_generalized_dice_loss", "dice", "segmentation",
       "`multiclass_generalized_dice_loss`", SAME, NONE, NONE,
       "0, not NaN, for an empty class",
       domain=("predictions: logits if apply_softmax",
               "predictions: probability if not apply_softmax", "targets: probability",
               "smooth: non_negative")),
    # Similarity, contrastive and metric learning.
    _e("cosine_similarity", "similarity", "metric", "`cosine_similarity(epsilon=)`", SAME,
       "`F.cosine_similarity`", "`−CosineSimilarity()`", "finite gradient at a zero vector",
       domain=("predictions: finite", "targets: finite", "epsilon: non_negative")),
    _e("cosine_distance", "similarity", "metric", "`cosine_distance(epsilon=)`", SAME,
       "`1 − F.cosine_similarity`", NONE, "finite gradient at a zero vector",
       domain=("predictions: finite", "targets: finite", "epsilon: non_negative")),
    _e("cosine_embedding_loss", "similarity", "metric", "`cosine_embedding_loss(margin=)`",
       NONE, "`CosineEmbeddingLoss`", NONE, "PyTorch's values and gradients",
       domain=("input1: finite", "input2: finite")),
    _e("pairwise_distance", "contrastive", "metric",
       '`pairwise_distance(metric="euclidean" \\| "squared_euclidean" \\| "cosine")`', NONE,
       "`F.pairwise_distance(eps=0)`", NONE, "gradient 0, not NaN, at `a == b`",
       domain=("a: finite", "b: finite")),
    _e("contrastive_loss", "contrastive", "metric",
       "`contrastive_loss(a, b, similar, margin=, metric=)`", NONE, NONE,
       "TFA `ContrastiveLoss` (twice these values)",
       "`0.5·[y·d² + (1−y)·max(m−d, 0)²]`, `y = 1` similar; finite gradient at `d = 0`",
       domain=("embeddings_a: finite", "embeddings_b: finite", "similar: probability",
               "margin: non_negative")),
    _e("contrastive_loss_from_distance", "contrastive", "metric",
       "`contrastive_loss_from_distance(d, similar, margin=)`", NONE, NONE,
       "TFA `ContrastiveLoss(y, d)` (twice these values)",
       domain=("distances: non_negative", "similar: probability",
               "margin: non_negative")),
    _e("triplet_margin_loss", "contrastive", "metric",
       "`triplet_margin_loss(a, p, n, margin=, norm_degree=, eps=, swap=)`",
       "`triplet_margin_loss` (eps inside the root; wrong for `norm_degree=1`)",
       "`TripletMarginLoss`", "PML `TripletMarginLoss`", "PyTorch's values and gradients",
       benchmark=True,
       domain=("anchors: finite", "positives: finite", "negatives: finite",
               "margin: non_negative")),
    _e("triplet_margin_with_distance_loss", "contrastive", "metric",
       "`triplet_margin_with_distance_loss(a, p, n, distance_function=, margin=, swap=)`",
       NONE, "`TripletMarginWithDistanceLoss`", NONE,
       "`distance_function` is static under jit",
       domain=("anchors: finite", "positives: finite", "negatives: finite",
               "margin: positive")),
    _e("ntxent", "contrastive", "metric", "`ntxent(embeddings, labels, temperature=)`", SAME,
       NONE, "PML `NTXentLoss`", "0 with zero gradient, not NaN, without a positive pair",
       benchmark=True,
       domain=("embeddings: finite", "temperature: positive", "axis_name: unsupported")),
    _e("info_nce", "contrastive", "metric",
       "`info_nce(queries, keys, temperature=, symmetric=, chunk_size=, axis_name=)`", NONE,
       "CLIP's `F.cross_entropy(q @ k.T / t, arange(B))`", "PML `NTXentLoss` on pairs",
       "row `i`'s positive is key `i`; `chunk_size` never holds the B×B matrix",
       benchmark=True,
       domain=("queries: finite", "keys: finite", "temperature: positive",
               "axis_name: unsupported")),
    _e("siglip_loss", "contrastive", "metric",
       "`siglip_loss(images, texts, temperature, bias, axis_name=)`", NONE, NONE,
       "big_vision's `sigmoid_loss`", "`temperature` is the multiplier `t`",
       domain=("image_embeddings: finite", "text_embeddings: finite",
               "temperature: positive", "axis_name: unsupported")),
    _e("make_pairs", "contrastive", "metric",
       "`make_pairs(labels, key, num_pairs, positive_fraction=)`", NONE, NONE,
       "PML miners", "balanced, jit-able pair sampling for Siamese training", checked=False),
    # Utilities.
    _e("reduce", "_reduce", "utility", "`reduce(losses, reduction, where=, weights=)`",
       checked=False),
    _e("checked", "_checked", "utility", "`checked(loss)`", checked=False),
)
# fmt: on


def public_names() -> list[str]:
    """Every name in ``jaxloss.__all__`` but ``__version__``, sorted."""
    return sorted(n for e in ENTRIES for n in e.names)


def readme_tables() -> str:
    """The README's loss tables, one per family (the utilities are in the prose)."""
    lines: list[str] = []
    for family, title in FAMILIES.items():
        if family == "utility":
            continue
        lines += [f"### {title}", "", "| jaxloss | optax | PyTorch | Keras and others | notes |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {e.call} | {e.optax} | {e.torch} | {e.keras} | {e.notes} |"
                  for e in ENTRIES if e.family == family]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


BEGIN = "<!-- loss tables: generated from jaxloss/_registry.py (make readme-tables) -->"
END = "<!-- end of the loss tables -->"


def write_readme(path: str) -> bool:
    """Rewrites the tables between :data:`BEGIN` and :data:`END` in ``path``; returns
    whether anything changed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, rest = text.split(BEGIN + "\n", 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n\n{readme_tables()}\n{END}{tail}"
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text


if __name__ == "__main__":
    import sys

    write_readme(sys.argv[1] if len(sys.argv) > 1 else "README.md")
