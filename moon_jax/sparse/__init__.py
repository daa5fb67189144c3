"""The sparse-training engine: the algorithm registry (dense, static, SET, RigL, gradual /
global / straight-through pruning), masks (unstructured, N:M, block, channel), layer-wise
sparsity, masked Optax updates and FLOPs accounting."""
from moon_jax.sparse.algorithms import (
    ALGORITHMS,
    PRUNING_METHODS,
    SCORES,
    STRUCTURES,
    Algorithm,
    algorithms_table,
    get_algorithm,
)
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
    StraightThroughState,
    straight_through_params,
    straight_through_updates,
    straight_through_weights,
)
from moon_jax.sparse.wrapped_optimizer import SparseOptimizer, SparseOptimizerState, sparse_optimizer, update_masks
from moon_jax.sparse.schedule import (
    PruningSchedule,
    UpdateSchedule,
    drop_fraction_at,
    is_pruning_step,
    is_update_step,
    pruning_sparsity_at,
    update_steps,
)
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
    drop_and_grow_many,
    initial_masks,
    make_updater,
    map_masked,
    mask_statistics,
    masked_density,
    masks_equal,
    pruning_event_counts,
    random_mask,
    select_global,
    top_k_mask,
    top_k_masks,
    uniform_draws,
)
