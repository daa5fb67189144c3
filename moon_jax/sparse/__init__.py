"""The sparse-training engine: masks (unstructured, N:M, block, channel), layer-wise sparsity,
RigL / SET / static updates, masked Optax updates and FLOPs accounting."""
from moon_jax.sparse.distribution import (
    DISTRIBUTIONS,
    SparsityPlan,
    layer_densities,
    plan_sparsity,
)
from moon_jax.sparse.flops import FlopsReport, flops_report, layer_flops, training_flops_relative
from moon_jax.sparse.leaves import SparsityRule, is_sparsifiable, sparsifiable_shapes
from moon_jax.sparse.optim import (
    MaskedUpdatesState,
    adamw,
    masked_updates,
    reset_optimizer_state,
    scale_by_schedule_at_step,
    sgd_nesterov,
)
from moon_jax.sparse.wrapped_optimizer import SparseOptimizer, SparseOptimizerState, sparse_optimizer
from moon_jax.sparse.schedule import UpdateSchedule, drop_fraction_at, is_update_step, update_steps
from moon_jax.sparse.structure import (
    UNSTRUCTURED,
    Structure,
    parse_structure,
    structure_plan,
    structured_count,
    structured_drop_and_grow,
    structured_random_mask,
    top_structured_mask,
)
from moon_jax.sparse.updaters import (
    METHODS,
    SparseState,
    SparseUpdater,
    apply_masks,
    drop_and_grow,
    make_updater,
    map_masked,
    masked_density,
    masks_equal,
    top_k_mask,
)
