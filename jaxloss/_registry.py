"""One description per public name: the list the others are checked against.

``tests/test_registry.py`` proves that ``jaxloss.__all__``, the cases of ``jaxloss
check``, the benchmark's rows and the README's tables agree with :data:`ENTRIES`; the
README tables are rendered from it (:func:`readme_tables`). Adding a loss means adding
its line here, and the test then names every list it is still missing from.

Columns: ``names`` (the first is the function, the rest are aliases of it), ``module``
(where it is defined), ``family`` (its README table), ``call`` (how the README shows
its options), ``optax``, ``torch``, ``keras`` (the nearest equivalent there, or "—"),
``notes`` (what differs), ``checked`` (has ``jaxloss check`` cases), ``benchmark`` (has
rows in ``benchmarks/run.py``).
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

    @property
    def name(self) -> str:
        return self.names[0]


def _e(names: str, module: str, family: str, call: str, optax: str = NONE,
       torch: str = NONE, keras: str = NONE, notes: str = "", *, checked: bool = True,
       benchmark: bool = False) -> Entry:
    return Entry(tuple(n.strip() for n in names.split(",")), module, family, call, optax,
                 torch, keras, notes, checked, benchmark)


SAME = "same name, same values"

# fmt: off
ENTRIES: tuple[Entry, ...] = (
    # Regression.
    _e("squared_error", "regression", "regression", "`squared_error`", SAME,
       '`MSELoss(reduction="none")`', benchmark=True),
    _e("l2_loss", "regression", "regression", "`l2_loss`", SAME,
       'half of `MSELoss(reduction="none")`', benchmark=True),
    _e("huber_loss", "regression", "regression", "`huber_loss(delta=)`", SAME,
       "`HuberLoss(delta=)`", "`Huber(delta=)`", benchmark=True),
    _e("mean_squared_error, mse", "regression", "regression",
       "`mean_squared_error`, `mse`", NONE, "`MSELoss()`", "`MeanSquaredError()`",
       "a mean by definition (over `axis=`)"),
    _e("mean_absolute_error, mae", "regression", "regression",
       "`mean_absolute_error`, `mae`", NONE, "`L1Loss()`", "`MeanAbsoluteError()`",
       "a mean by definition (over `axis=`)"),
    _e("log_cosh", "similarity", "regression", "`log_cosh`", SAME, NONE, "`LogCosh()`",
       "exact near 0; no overflow past ±89 in float32"),
    _e("smooth_l1_loss", "regression", "regression", "`smooth_l1_loss(beta=)`", NONE,
       "`SmoothL1Loss(beta=)`", NONE, "`huber_loss / beta`; `beta=0` is L1"),
    _e("poisson_nll_loss", "regression", "regression",
       "`poisson_nll_loss(log_input=, full=, eps=)`", NONE, "`PoissonNLLLoss`", "`Poisson()`"),
    _e("gaussian_nll_loss", "regression", "regression",
       "`gaussian_nll_loss(predictions, targets, variance, full=, eps=)`", NONE,
       "`GaussianNLLLoss`", NONE,
       "PyTorch's variance shapes; the gradient passes the `eps` clamp, as PyTorch's"),
    # Classification.
    _e("sigmoid_binary_cross_entropy", "classification", "classification",
       "`sigmoid_binary_cross_entropy(pos_weight=, label_smoothing=)`", SAME,
       "`BCEWithLogitsLoss(pos_weight=)`",
       "`BinaryCrossentropy(from_logits=True, label_smoothing=)`", benchmark=True),
    _e("binary_cross_entropy", "classification", "classification", "`binary_cross_entropy`",
       NONE, "`BCELoss()`", "`BinaryCrossentropy()`",
       "exact logs; PyTorch clamps the log at −100, Keras clips p at 1e-7"),
    _e("softmax_cross_entropy", "classification", "classification",
       "`softmax_cross_entropy(label_smoothing=, softcap=, temperature=, z_loss=)`", SAME,
       "`CrossEntropyLoss()` with probability targets",
       "`CategoricalCrossentropy(from_logits=True)`", "0, not NaN, at −inf logits",
       benchmark=True),
    _e("softmax_cross_entropy_with_integer_labels", "classification", "classification",
       "`softmax_cross_entropy_with_integer_labels(class_weights=, ignore_index=, "
       "label_smoothing=, softcap=, temperature=, z_loss=, return_aux=)`", SAME,
       "`CrossEntropyLoss(weight=, ignore_index=, label_smoothing=)`",
       "`SparseCategoricalCrossentropy(from_logits=True, ignore_class=)`; Liger's "
       "`cross_entropy(softcap=, lse_square_scale=)`", benchmark=True),
    _e("categorical_cross_entropy", "classification", "classification",
       "`categorical_cross_entropy`", NONE, NONE, "`CategoricalCrossentropy()`",
       "on probabilities; Keras clips at 1e-7"),
    _e("safe_softmax_cross_entropy", "focal", "classification",
       "`safe_softmax_cross_entropy`", SAME,
       "`CrossEntropyLoss()` with probability targets",
       "`CategoricalCrossentropy(from_logits=True)`"),
    _e("nll_loss", "classification", "classification",
       "`nll_loss(log_probs, labels, class_weights=, ignore_index=)`", NONE, "`NLLLoss`",
       NONE, "class axis last; `\"mean\"` is PyTorch's weighted mean"),
    _e("sigmoid_focal_loss", "focal", "classification", "`sigmoid_focal_loss(alpha=, gamma=)`",
       SAME, "`torchvision.ops.sigmoid_focal_loss`", "`BinaryFocalCrossentropy()`"),
    _e("poly_loss_cross_entropy", "focal", "classification",
       "`poly_loss_cross_entropy(epsilon=)`", SAME, NONE, NONE,
       "finite at −inf logits and empty rows"),
    _e("soft_margin_loss", "classification", "classification", "`soft_margin_loss`", NONE,
       "`SoftMarginLoss`", NONE, "`log(1 + exp(−y x))`, finite at any logit"),
    _e("multilabel_soft_margin_loss", "classification", "classification",
       "`multilabel_soft_margin_loss(class_weights=)`", NONE,
       "`MultiLabelSoftMarginLoss(weight=)`", NONE),
    _e("smooth_labels", "smoothing", "classification", "`smooth_labels(labels, alpha)`",
       "`optax.smooth_labels`", "the `label_smoothing=` option",
       "the `label_smoothing=` option"),
    _e("linear_softmax_cross_entropy", "large_vocab", "classification",
       "`linear_softmax_cross_entropy(hidden, weight, labels, bias=, chunk_size=, "
       "ignore_index=, label_smoothing=, softcap=, temperature=, z_loss=, return_aux=)`",
       "— (on `hidden @ weight`)", "— (Liger's fused linear CE, Cut Cross-Entropy)",
       "Liger: `softcap=`, `lse_square_scale=` (our `z_loss=`), `return_z_loss=` and "
       "`return_token_accuracy=` (our `return_aux=`); Cut Cross-Entropy: `softcap=`",
       "never holds the `[N, V]` logits", benchmark=True),
    _e("linear_log_probs", "large_vocab", "classification",
       "`linear_log_probs(hidden, weight, labels, bias=, softcap=, temperature=, "
       "return_entropy=, ignore_index=, chunk_size=)`", NONE, NONE,
       "Liger's fused linear RL losses (per-token log-probs, entropy)",
       "per-token `log p(label)` and entropy, differentiable, never holds `[N, V]`"),
    _e("CrossEntropyAux", "_lm_head", "utility", "`CrossEntropyAux`", checked=False),
    _e("shift_labels", "large_vocab", "classification",
       "`shift_labels(tokens, ignore_index=, where=)`", NONE,
       "— (`labels[..., 1:]` by hand)", NONE,
       "causal-LM labels: position t predicts token t + 1; Cut Cross-Entropy's `shift`",
       checked=False),
    # Divergences.
    _e("kl_divergence", "divergence", "divergence", "`kl_divergence`", SAME,
       '`KLDivLoss(reduction="none")` summed over the class axis',
       "`KLDivergence()` (without its clipping)", "0 gradient, not NaN, at a 0 target"),
    _e("kl_divergence_with_log_targets", "divergence", "divergence",
       "`kl_divergence_with_log_targets`", SAME, "`KLDivLoss(log_target=True)`", NONE,
       "0, not NaN, at a −inf log target"),
    _e("generalized_kl_divergence, convex_kl_divergence", "divergence", "divergence",
       "`generalized_kl_divergence` (`convex_kl_divergence`)", SAME),
    # Margin and ranking.
    _e("hinge_loss", "margin", "margin", "`hinge_loss`", SAME, NONE, "`Hinge()`"),
    _e("perceptron_loss", "margin", "margin", "`perceptron_loss`", SAME),
    _e("multiclass_hinge_loss", "margin", "margin", "`multiclass_hinge_loss`", SAME,
       "— (`MultiMarginLoss` sums over classes)", "≈ `CategoricalHinge()`",
       "exactly 0 where optax leaves ~2e-7"),
    _e("multiclass_perceptron_loss", "margin", "margin", "`multiclass_perceptron_loss`", SAME),
    _e("multi_margin_loss", "margin", "margin",
       "`multi_margin_loss(p=, margin=, class_weights=)`", NONE, "`MultiMarginLoss`", NONE,
       "class axis last"),
    _e("multilabel_margin_loss", "margin", "margin", "`multilabel_margin_loss`", NONE,
       "`MultiLabelMarginLoss`", NONE, "targets padded with −1, as in PyTorch"),
    _e("margin_ranking_loss", "margin", "margin", "`margin_ranking_loss(margin=)`", NONE,
       "`MarginRankingLoss`"),
    _e("hinge_embedding_loss", "margin", "margin", "`hinge_embedding_loss(margin=)`", NONE,
       "`HingeEmbeddingLoss`"),
    _e("ranking_softmax_loss", "ranking", "margin",
       "`ranking_softmax_loss(where=, weights=, reduce_fn=)`", SAME,
       "`CrossEntropyLoss()` per list with probability targets", NONE,
       "finite at ±3e38 and −inf logits, where optax gives NaN"),
    # Sparse, structured and sequence outputs.
    _e("sparsemax_loss", "sparsemax", "structured", "`sparsemax_loss`", SAME, NONE, NONE,
       "exact gradient near 3e38"),
    _e("multiclass_sparsemax_loss", "sparsemax", "structured", "`multiclass_sparsemax_loss`",
       SAME),
    _e("make_fenchel_young_loss", "fenchel_young", "structured",
       "`make_fenchel_young_loss(max_fun, shift_equivariant=)`", SAME, NONE, NONE,
       "extra arguments reach `max_fun` (optax drops them); finite at −inf scores"),
    _e("ctc_loss", "sequence", "structured",
       "`ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=, "
       "zero_infinity=)`", SAME, '`CTCLoss(reduction="none", zero_infinity=)`', "`CTC()`",
       "gradient from the alpha–beta recursion (custom_vjp); finite at a −inf class, "
       "where optax gives NaN", benchmark=True),
    _e("ctc_loss_with_forward_probs", "sequence", "structured",
       "`ctc_loss_with_forward_probs`", SAME),
    # Segmentation.
    _e("dice_loss", "dice", "segmentation", "`dice_loss(class_weights=, smooth=, alpha=, "
       "beta=)`", SAME, NONE, "`Dice()` (no smooth/alpha/beta)",
       "0, not NaN, for an empty class at `smooth=0`"),
    _e("binary_dice_loss", "dice", "segmentation", "`binary_dice_loss`", SAME, NONE, NONE,
       "0, not NaN, for an empty mask at `smooth=0`"),
    _e("multiclass_generalized_dice_loss", "dice", "segmentation",
       "`multiclass_generalized_dice_loss`", SAME, NONE, NONE,
       "0, not NaN, for an empty class"),
    # Similarity, contrastive and metric learning.
    _e("cosine_similarity", "similarity", "metric", "`cosine_similarity(epsilon=)`", SAME,
       "`F.cosine_similarity`", "`−CosineSimilarity()`", "finite gradient at a zero vector"),
    _e("cosine_distance", "similarity", "metric", "`cosine_distance(epsilon=)`", SAME,
       "`1 − F.cosine_similarity`", NONE, "finite gradient at a zero vector"),
    _e("cosine_embedding_loss", "similarity", "metric", "`cosine_embedding_loss(margin=)`",
       NONE, "`CosineEmbeddingLoss`", NONE, "PyTorch's values and gradients"),
    _e("pairwise_distance", "contrastive", "metric",
       '`pairwise_distance(metric="euclidean" \\| "squared_euclidean" \\| "cosine")`', NONE,
       "`F.pairwise_distance(eps=0)`", NONE, "gradient 0, not NaN, at `a == b`"),
    _e("contrastive_loss", "contrastive", "metric",
       "`contrastive_loss(a, b, similar, margin=, metric=)`", NONE, NONE,
       "TFA `ContrastiveLoss` (twice these values)",
       "`0.5·[y·d² + (1−y)·max(m−d, 0)²]`, `y = 1` similar; finite gradient at `d = 0`"),
    _e("contrastive_loss_from_distance", "contrastive", "metric",
       "`contrastive_loss_from_distance(d, similar, margin=)`", NONE, NONE,
       "TFA `ContrastiveLoss(y, d)` (twice these values)"),
    _e("triplet_margin_loss", "contrastive", "metric",
       "`triplet_margin_loss(a, p, n, margin=, norm_degree=, eps=, swap=)`",
       "`triplet_margin_loss` (eps inside the root; wrong for `norm_degree=1`)",
       "`TripletMarginLoss`", "PML `TripletMarginLoss`", "PyTorch's values and gradients",
       benchmark=True),
    _e("triplet_margin_with_distance_loss", "contrastive", "metric",
       "`triplet_margin_with_distance_loss(a, p, n, distance_function=, margin=, swap=)`",
       NONE, "`TripletMarginWithDistanceLoss`", NONE,
       "`distance_function` is static under jit"),
    _e("ntxent", "contrastive", "metric", "`ntxent(embeddings, labels, temperature=)`", SAME,
       NONE, "PML `NTXentLoss`", "0 with zero gradient, not NaN, without a positive pair",
       benchmark=True),
    _e("info_nce", "contrastive", "metric",
       "`info_nce(queries, keys, temperature=, symmetric=, chunk_size=, axis_name=)`", NONE,
       "CLIP's `F.cross_entropy(q @ k.T / t, arange(B))`", "PML `NTXentLoss` on pairs",
       "row `i`'s positive is key `i`; `chunk_size` never holds the B×B matrix",
       benchmark=True),
    _e("siglip_loss", "contrastive", "metric",
       "`siglip_loss(images, texts, temperature, bias, axis_name=)`", NONE, NONE,
       "big_vision's `sigmoid_loss`", "`temperature` is the multiplier `t`"),
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
