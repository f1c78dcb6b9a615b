"""jaxloss: numerically exact loss functions for JAX.

Every loss is a pure function that jit-compiles, vmaps and differentiates; the
cross-entropies carry a custom derivative rule whose backward pass is the closed-form
derivative and serves forward mode (``jax.jvp``) too. Names, call convention and
values follow ``optax.losses``.
"""

from jaxloss import distributed  # noqa: F401  (jaxloss.distributed.data_mesh, ...)
from jaxloss._checked import checked
from jaxloss._lm_head import CrossEntropyAux
from jaxloss._reduce import reduce
from jaxloss.classification import (
    binary_cross_entropy,
    categorical_cross_entropy,
    multilabel_soft_margin_loss,
    nll_loss,
    sigmoid_binary_cross_entropy,
    soft_margin_loss,
    softmax_cross_entropy,
    softmax_cross_entropy_with_integer_labels,
)
from jaxloss.contrastive import (
    contrastive_loss,
    contrastive_loss_from_distance,
    info_nce,
    make_pairs,
    ntxent,
    pairwise_distance,
    siglip_loss,
    triplet_margin_loss,
    triplet_margin_with_distance_loss,
)
from jaxloss.dice import binary_dice_loss, dice_loss, multiclass_generalized_dice_loss
from jaxloss.divergence import (
    convex_kl_divergence,
    generalized_kl_divergence,
    kl_divergence,
    kl_divergence_with_log_targets,
)
from jaxloss.fenchel_young import make_fenchel_young_loss
from jaxloss.focal import (
    poly_loss_cross_entropy,
    safe_softmax_cross_entropy,
    sigmoid_focal_loss,
)
from jaxloss.large_vocab import linear_log_probs, linear_softmax_cross_entropy, shift_labels
from jaxloss.margin import (
    hinge_embedding_loss,
    hinge_loss,
    margin_ranking_loss,
    multi_margin_loss,
    multiclass_hinge_loss,
    multiclass_perceptron_loss,
    multilabel_margin_loss,
    perceptron_loss,
)
from jaxloss.ranking import ranking_softmax_loss
from jaxloss.regression import (
    gaussian_nll_loss,
    huber_loss,
    l2_loss,
    mae,
    mean_absolute_error,
    mean_squared_error,
    mse,
    poisson_nll_loss,
    smooth_l1_loss,
    squared_error,
)
from jaxloss.sequence import ctc_loss, ctc_loss_with_forward_probs
from jaxloss.similarity import (
    cosine_distance,
    cosine_embedding_loss,
    cosine_similarity,
    log_cosh,
)
from jaxloss.smoothing import smooth_labels
from jaxloss.sparsemax import multiclass_sparsemax_loss, sparsemax_loss

__version__ = "0.1.0"

__all__ = [
    "CrossEntropyAux",
    "__version__",
    "binary_cross_entropy",
    "binary_dice_loss",
    "categorical_cross_entropy",
    "checked",
    "contrastive_loss",
    "contrastive_loss_from_distance",
    "convex_kl_divergence",
    "cosine_distance",
    "cosine_embedding_loss",
    "cosine_similarity",
    "ctc_loss",
    "ctc_loss_with_forward_probs",
    "dice_loss",
    "gaussian_nll_loss",
    "generalized_kl_divergence",
    "hinge_embedding_loss",
    "hinge_loss",
    "huber_loss",
    "info_nce",
    "kl_divergence",
    "kl_divergence_with_log_targets",
    "l2_loss",
    "linear_log_probs",
    "linear_softmax_cross_entropy",
    "log_cosh",
    "mae",
    "make_fenchel_young_loss",
    "make_pairs",
    "margin_ranking_loss",
    "mean_absolute_error",
    "mean_squared_error",
    "mse",
    "multi_margin_loss",
    "multiclass_generalized_dice_loss",
    "multiclass_hinge_loss",
    "multiclass_perceptron_loss",
    "multiclass_sparsemax_loss",
    "multilabel_margin_loss",
    "multilabel_soft_margin_loss",
    "nll_loss",
    "ntxent",
    "pairwise_distance",
    "perceptron_loss",
    "poisson_nll_loss",
    "poly_loss_cross_entropy",
    "ranking_softmax_loss",
    "reduce",
    "safe_softmax_cross_entropy",
    "shift_labels",
    "siglip_loss",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "smooth_labels",
    "soft_margin_loss",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "sparsemax_loss",
    "squared_error",
    "triplet_margin_loss",
    "triplet_margin_with_distance_loss",
]
