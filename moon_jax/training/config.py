"""The run configuration: every field, its default, and up-front validation.

Config files under ``configs/`` start from :func:`base_config` and change what they need, so the
set of fields is defined once, here. :func:`validate_config` checks every value before anything
is built and raises :class:`ConfigError` naming the field, the bad value and what is allowed.
"""
from __future__ import annotations

from typing import Any, Iterable

import ml_collections

from moon_jax.data import (DatasetFormatError, DatasetNotFoundError, available_datasets, check_dataset_path,
                           names_a_path)
from moon_jax.data.augment import AUGMENTATIONS
from moon_jax.metrics import split_group_prefix
from moon_jax.models import MODEL_NAMES
from moon_jax.moon.averaging import TRIGGERS
from moon_jax.moon.loss import ALPHA_TUNINGS, WEIGHTINGS
from moon_jax.moon.recipe import HEADS
from moon_jax.sparse.distribution import DISTRIBUTIONS
from moon_jax.sparse.algorithms import ALGORITHMS, DROP_AND_GROW, METHODS, PRUNING_METHODS
from moon_jax.sparse.schedule import DROP_COUNT_ROUNDINGS
from moon_jax.sparse.structure import parse_structure

OPTIMIZERS = ("sgd", "adamw")
DTYPES = ("float32", "bfloat16")
DATA_SOURCES = ("auto", "packed", "tfds")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and what is allowed."""


def describe_method(config) -> str:
    """``MOON + rigl 90% erk``-style description of a run's method, for logs and tables, with its
    ablation and baseline switches in parentheses (e.g. ``rigl 90% erk (weight averaging, random
    mask 0.01)``)."""
    name = config.sparse.method
    if config.sparse.method != "dense":
        name += f" {100 * config.sparse.sparsity:g}% {config.sparse.distribution}"
        if config.sparse.structure != "unstructured":
            name += f" {config.sparse.structure}"
    m, extras, prefix = config.moon, [], ""
    if m.enabled:
        prefix = "" if m.head == "none" else "MOON + "
        if m.head == "reference_k":
            extras.append("reference K-output head")
        if m.head != "none" and m.loss_weighting == "none":
            extras.append("no loss modification")
        if m.head != "none" and m.alpha_tuning == "fixed":
            extras.append(f"fixed alpha {m.fixed_alpha:g}")
        if m.head != "none" and m.alpha_tuning == "untuned_ramp":
            extras.append("untuned alpha ramp")
        if not m.averaging_epochs and m.head != "none":
            extras.append("no voting")
        elif m.averaging_epochs and m.head == "none":
            extras.append("weight averaging")
        if m.dropconnect_rate:
            extras.append(f"random mask {m.dropconnect_rate:g}")
        if m.placeholders:
            extras.append("placeholders")
        if m.averaging_epochs and m.averaging_trigger == "reference":
            extras.append("reference averaging trigger")
    drops_and_grows = getattr(ALGORITHMS.get(config.sparse.method), "schedule", None) == DROP_AND_GROW
    if drops_and_grows and config.sparse.drop_fraction_cosine_steps:
        extras.append(f"drop-fraction cosine over {config.sparse.drop_fraction_cosine_steps} iterations")
    if drops_and_grows and config.sparse.drop_count_rounding == "ceil":
        extras.append("drop counts rounded up")
    if config.data.mixup_alpha:
        extras.append(f"Mixup {config.data.mixup_alpha:g}")
    return prefix + name + (f" ({', '.join(extras)})" if extras else "")


def base_config() -> ml_collections.ConfigDict:
    """All fields with their defaults: the MOON reference recipe for CIFAR-10 / ResNet-18
    (github StevenBoys/MOON README), the one source of those values.

    100 epochs, batch 128, SGD with Nesterov momentum 0.9 and weight decay 5e-4, learning rate
    0.1 x a cosine multiplier 1.2 -> 0.08 over 80 epochs then constant for the last 20 (weight
    averaging); RigL 90% ERK, mask updates every 80 iterations in the first 70% of training with
    drop fraction 0.3 (cosine); MOON with 5 warm-up epochs and alpha EWMA/64 -> 1.0.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"
    c.model.dtype = "float32"  # computation dtype; params stay float32
    c.model.width = 0  # ResNet base width; 0 = the architecture's own (64)

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "cifar10"
    c.data.source = "auto"  # auto | packed | tfds
    c.data.data_dir = ""  # packed .npz dir; "" = MOON_JAX_DATA_DIR or ../shared/data
    c.data.tfds_data_dir = ""  # TFDS data dir; "" = TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.augment = "crop_flip"  # on device: crop_flip (4-pixel pad + crop + flip) | flip | none
    c.data.mixup_alpha = 0.0  # Mixup's Beta(alpha, alpha) coefficient per batch; 0 = off (reference Mixup: 0.2)
    c.data.stream_train = False  # read training batches from TFDS on host threads (ImageNet)
    c.data.random_resized_crop = False  # host-side Inception crops when streaming
    c.data.ood_datasets = ("tin_resize", "mnist", "textures_subset", "gaussian_noise", "uniform_noise")
    c.data.num_ood_examples = 0  # 0 = all
    c.data.num_train_examples = 0  # 0 = all (smaller for quick runs)
    c.data.num_test_examples = 0
    c.data.image_size = 0  # folder datasets: resize every image to this square size; 0 = keep (one size required)

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 100
    c.train.batch_size = 128
    c.train.eval_batch_size = 500
    c.train.optimizer = "sgd"
    c.train.base_lr = 0.1
    c.train.lr_ini = 1.2  # multiplier at step 0 (reference README)
    c.train.lr_end = 0.08  # multiplier at the end of the cosine and after
    c.train.constant_lr_epochs = 20  # reference "deduct": last epochs at constant lr_end
    c.train.momentum = 0.9
    c.train.nesterov = True
    c.train.weight_decay = 5e-4
    c.train.log_every_steps = 50
    c.train.eval_every_epochs = 10  # 0 = only at the end
    c.train.checkpoint_every_epochs = 5  # asynchronous; also at the end, on SIGTERM and at --stop_at_step
    c.train.checkpoints_to_keep = 2
    c.train.progress_bar = True
    c.train.batch_shards = 0  # BatchNorm/gradient shards of the global batch; 0 = one per device
    c.train.exact_reduction = False  # average shards in a fixed order: bit-identical on any device count

    c.sparse = ml_collections.ConfigDict()
    c.sparse.method = "rigl"  # dense | static | set | rigl | gmp | saliency | random_pruning | global_magnitude
    # | global_saliency | ste_magnitude | ste_random (moon_jax.sparse.ALGORITHMS)
    c.sparse.sparsity = 0.9
    c.sparse.distribution = "erk"  # uniform | er | erk
    c.sparse.update_every = 80  # iterations between mask updates / pruning iterations (reference: 80)
    c.sparse.drop_fraction = 0.3
    c.sparse.end_fraction = 0.7  # mask updates in the first 70% of iterations (reference)
    # The drop fraction's cosine length in iterations; 0 = the mask-update period (RigL). 70 with
    # drop_count_rounding = 'ceil' is the released MOON code's schedule (its end_when = 70 epochs
    # read as iterations: ~1.5e-4 from iteration 70 on, near-static masks).
    c.sparse.drop_fraction_cosine_steps = 0
    c.sparse.drop_count_rounding = "floor"  # floor (RigL) | ceil (MOON reference) of fraction x nnz
    # pruning methods (Zhu & Gupta 2017): prune from dense between these fractions of the iterations,
    # the target sparsity exactly at the end; start == end prunes once (one-shot)
    c.sparse.prune_start_fraction = 0.1
    c.sparse.prune_end_fraction = 0.7
    c.sparse.dense_first_layer = False
    c.sparse.dense_last_layer = False
    c.sparse.structure = "unstructured"  # unstructured | nm_N,M (or N:M) | block_R,C | channel

    c.moon = ml_collections.ConfigDict()
    c.moon.enabled = True  # K+1 head + unknown-aware loss + voting; False = none of the moon.* switches
    c.moon.head = "k_plus_1"  # k_plus_1 | reference_k (K outputs, last class = "unknown") | none (K, cross-entropy)
    c.moon.loss_weighting = "unknown_aware"  # unknown_aware | none (ablation: plain cross-entropy on the head)
    c.moon.alpha_tuning = "auto"  # auto (EWMA/64 ramped to alpha_final) | fixed (fixed_alpha) | untuned_ramp (1/64 ramped)
    c.moon.fixed_alpha = 1.0  # alpha of the unknown-aware phase with alpha_tuning = fixed (reference w_out)
    c.moon.warmup_epochs = 5
    c.moon.ewma_mu = 0.05
    c.moon.alpha_init_factor = 64.0  # reference w_out2
    c.moon.alpha_final = 1.0  # reference w_out
    c.moon.averaging_epochs = 20  # weight averaging ("voting") over the last epochs; 0 = off (ablation)
    c.moon.averaging_trigger = "epoch"  # epoch | reference
    c.moon.dropconnect_rate = 0.0  # CigL random mask (reference order; needs masks); the reference uses 0.01
    # Placeholders (moon_jax.moon.placeholders, after PROSER, Zhou et al. CVPR 2021): in the
    # unknown-aware phase each batch adds mixtures of two training images of different classes,
    # labelled "unknown". Every setting below was fixed before any run, from PROSER or first
    # principles (the module docstring gives the reasons); none was tuned on a reported set.
    c.moon.placeholders = False
    c.moon.placeholder_mix_alpha = 1.0  # lam ~ Beta(a, a): a = 1 (uniform), PROSER's choice
    c.moon.placeholder_weight = 1.0  # the placeholders' mean cross-entropy enters the loss with this weight

    c.eval = ml_collections.ConfigDict()
    c.eval.ece_bins = 15
    c.eval.scores = ()  # () = every score that is a default for the model's head (score_registry)
    return c


def config_from_dict(values: dict) -> ml_collections.ConfigDict:
    """A full ConfigDict from a saved JSON config: base defaults updated with ``values``.

    JSON turns tuples into lists; fields whose default is a tuple get tuples back.
    """
    config = base_config()

    def update(node: ml_collections.ConfigDict, saved: dict, prefix: str):
        for key, value in saved.items():
            if key not in node:
                raise ConfigError(
                    f"the checkpoint's config has a field config.{prefix}{key} this version does not know; "
                    "it was written by another moon-jax version"
                )
            if isinstance(node[key], ml_collections.ConfigDict):
                update(node[key], value, prefix + key + ".")
            elif isinstance(node[key], tuple):
                node[key] = tuple(value)
            else:
                node[key] = value

    update(config, values, "")
    return config


REFERENCE_TRAIN_EXAMPLES = 50_000  # CIFAR-10's training set, which the reference recipe's phases are counted on


def scaled_reference_recipe(epochs: int, steps_per_epoch: int) -> ml_collections.ConfigDict:
    """The reference recipe (:func:`base_config`) shrunk to ``epochs`` epochs of ``steps_per_epoch``
    iterations on a uniform subset of ``steps_per_epoch x batch`` training images, every phase
    keeping its share of the run.

    Why: a run that two CPU cores finish is far shorter than the reference's 100 epochs of 390
    iterations, and MOON's phases only mean the same thing if each keeps its proportion: the
    warm-up (5 of 100 epochs), the constant-learning-rate tail over which the weights are averaged
    (20 of 100), and RigL's mask updates every 80 of 390 iterations (about 5 an epoch) over the
    first 70% of the iterations. Epoch counts are rounded down. A short run logs once an epoch,
    is evaluated once, at the end, and checkpointed every tenth of the run. Dataset, model and
    OOD sets are left to the caller.
    """
    config = base_config()
    reference_epochs = config.train.epochs
    reference_steps = REFERENCE_TRAIN_EXAMPLES // config.train.batch_size
    config.data.num_train_examples = steps_per_epoch * config.train.batch_size
    config.train.epochs = epochs
    config.train.constant_lr_epochs = epochs * config.train.constant_lr_epochs // reference_epochs
    config.train.log_every_steps = steps_per_epoch
    config.train.eval_every_epochs = 0
    config.train.checkpoint_every_epochs = max(1, epochs // 10)
    config.sparse.update_every = max(1, round(config.sparse.update_every * steps_per_epoch / reference_steps))
    config.moon.warmup_epochs = epochs * config.moon.warmup_epochs // reference_epochs
    config.moon.averaging_epochs = epochs * config.moon.averaging_epochs // reference_epochs
    return config


#: Phase lengths (epochs) and intervals (every so many epochs) that keep their share of the run
#: when its length changes (:func:`scale_phases_to_epochs`).
PHASE_FIELDS = ("train.constant_lr_epochs", "moon.warmup_epochs", "moon.averaging_epochs")
INTERVAL_FIELDS = ("train.eval_every_epochs", "train.checkpoint_every_epochs")


def scale_phases_to_epochs(config: ml_collections.ConfigDict, from_epochs: int, keep: Iterable[str] = ()) -> dict:
    """Scales ``config``'s phases (in place) from a run of ``from_epochs`` epochs to one of
    ``config.train.epochs``, by the rule of :func:`scaled_reference_recipe`: each phase keeps its
    share of the run (rounded down), each interval too (at least 1 when it was on). Fields named
    in ``keep`` (given explicitly by the user) are left alone. Returns ``{field: (old, new)}``
    for the fields that changed.
    """
    epochs = config.train.epochs
    changed = {}
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1 or epochs == from_epochs:
        return changed
    for field in PHASE_FIELDS + INTERVAL_FIELDS:
        if field in keep:
            continue
        group, name = field.split(".")
        old = config[group][name]
        new = old * epochs // from_epochs
        if field in INTERVAL_FIELDS and old > 0:
            new = max(1, new)
        if new != old:
            config[group][name] = new
            changed[field] = (old, new)
    return changed


def _fail(field: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"config.{field} = {value!r} is not valid: {allowed}")


def _check_choice(config, field: str, allowed: Iterable[str]):
    value = _get(config, field)
    allowed = tuple(allowed)
    if value not in allowed:
        raise _fail(field, value, "allowed: " + ", ".join(allowed))


def _get(config, field: str):
    node = config
    for part in field.split("."):
        node = node[part]
    return node


def _check_positive_int(config, field: str, allow_zero: bool = False):
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise _fail(field, value, "must be an integer >= %d" % (0 if allow_zero else 1))


def _check_number(config, field: str, low: float, high: float, low_open=False, high_open=False):
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(field, value, "must be a number")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
        raise _fail(field, value, f"must be in {interval}")


def check_fields(config, reference=None, prefix: str = "") -> None:
    """Raises :class:`ConfigError` for any field that :func:`base_config` does not define."""
    reference = base_config() if reference is None else reference
    for key in config.keys():
        name = prefix + key
        if key not in reference:
            known = ", ".join(sorted(prefix + k for k in reference.keys()))
            raise ConfigError(f"config.{name} is not a known field (mistyped?); known fields here: {known}")
        if isinstance(reference[key], ml_collections.ConfigDict):
            if not isinstance(config[key], ml_collections.ConfigDict):
                raise _fail(name, config[key], "must be a group of fields")
            check_fields(config[key], reference[key], name + ".")
    for key in reference.keys():
        if key not in config:
            raise ConfigError(f"config.{prefix + key} is missing; start config files from base_config()")


def validate_config(config, num_devices: int = 1, known_datasets: Iterable[str] | None = None) -> None:
    """Checks every value; raises :class:`ConfigError` naming the first bad field.

    Args:
      config: the run's ConfigDict.
      num_devices: the number of devices the global batch is split over.
      known_datasets: dataset names accepted for ``data.dataset`` / ``data.ood_datasets``
        (defaults to :func:`moon_jax.data.available_datasets`).
    """
    check_fields(config)
    _check_positive_int(config, "seed", allow_zero=True)
    _check_choice(config, "model.name", MODEL_NAMES)
    _check_choice(config, "model.dtype", DTYPES)
    _check_positive_int(config, "model.width", allow_zero=True)
    if config.model.width and config.model.name not in ("resnet18", "resnet50"):
        raise _fail("model.width", config.model.width, "only resnet18 and resnet50 take a width; use 0")

    if known_datasets is None:
        known_datasets = available_datasets()
    known = tuple(known_datasets)

    def check_dataset(field, name, purpose):
        if names_a_path(name):
            try:
                check_dataset_path(name, purpose)
            except (DatasetNotFoundError, DatasetFormatError) as err:
                raise _fail(field, name, str(err)) from None
            return
        if not isinstance(name, str) or not (name in known or name.startswith("tfds:")):
            raise _fail(field, name, "allowed: " + ", ".join(known) + ", 'tfds:<name>', or a path to a folder of "
                        "images (<path>/train/<label>/<image> for data.dataset), an image list (.txt) or a packed .npz")

    check_dataset("data.dataset", config.data.dataset, "id")
    if not isinstance(config.data.ood_datasets, (tuple, list)):
        raise _fail("data.ood_datasets", config.data.ood_datasets, "must be a tuple of dataset names")
    for name in config.data.ood_datasets:
        check_dataset("data.ood_datasets", split_group_prefix(name)[1] if isinstance(name, str) else name, "ood")
    _check_positive_int(config, "data.image_size", allow_zero=True)
    dataset_is_path = names_a_path(config.data.dataset)
    if dataset_is_path and config.data.source != "auto":
        raise _fail("data.source", config.data.source, "a dataset given as a path is read with 'auto'")
    if dataset_is_path and config.data.stream_train:
        raise _fail("data.stream_train", True, "streaming reads TFDS datasets; a folder dataset is decoded once "
                    "and held in memory: use False")
    if config.data.image_size and not dataset_is_path:
        raise _fail("data.image_size", config.data.image_size,
                    "only a folder dataset (data.dataset = a path) is resized; use 0 for named datasets")
    _check_choice(config, "data.source", DATA_SOURCES)
    _check_choice(config, "data.augment", AUGMENTATIONS)
    for field in ("data.stream_train", "data.random_resized_crop", "moon.enabled", "train.nesterov", "train.exact_reduction",
                  "train.progress_bar", "sparse.dense_first_layer", "sparse.dense_last_layer", "moon.placeholders"):
        if not isinstance(_get(config, field), bool):
            raise _fail(field, _get(config, field), "must be True or False")
    if config.data.random_resized_crop and not config.data.stream_train:
        raise _fail("data.random_resized_crop", True, "host-side crops need data.stream_train = True")
    for field in ("data.num_ood_examples", "data.num_train_examples", "data.num_test_examples"):
        _check_positive_int(config, field, allow_zero=True)

    for field in ("train.epochs", "train.batch_size", "train.eval_batch_size", "train.log_every_steps"):
        _check_positive_int(config, field)
    for field in ("train.eval_every_epochs", "train.checkpoint_every_epochs", "train.constant_lr_epochs"):
        _check_positive_int(config, field, allow_zero=True)
    _check_positive_int(config, "train.checkpoints_to_keep")
    _check_choice(config, "train.optimizer", OPTIMIZERS)
    _check_number(config, "train.base_lr", 0.0, float("inf"), low_open=True)
    for field in ("train.lr_ini", "train.lr_end"):
        _check_number(config, field, 0.0, float("inf"))
    _check_number(config, "train.momentum", 0.0, 1.0, high_open=True)
    _check_number(config, "train.weight_decay", 0.0, float("inf"))
    if config.train.constant_lr_epochs >= config.train.epochs:
        raise _fail(
            "train.constant_lr_epochs", config.train.constant_lr_epochs,
            f"must be smaller than train.epochs = {config.train.epochs}",
        )
    for field, size in (("train.batch_size", config.train.batch_size), ("train.eval_batch_size", config.train.eval_batch_size)):
        if size % num_devices:
            raise _fail(field, size, f"must be divisible by the number of devices ({num_devices})")
    _check_positive_int(config, "train.batch_shards", allow_zero=True)
    shards = config.train.batch_shards or num_devices
    if shards % num_devices:
        raise _fail("train.batch_shards", config.train.batch_shards,
                    f"must be a multiple of the number of devices ({num_devices}), or 0 for one per device")
    if config.train.batch_size % shards:
        raise _fail("train.batch_shards", config.train.batch_shards,
                    f"must divide train.batch_size = {config.train.batch_size}")

    _check_choice(config, "sparse.method", METHODS)
    _check_choice(config, "sparse.distribution", DISTRIBUTIONS)
    if config.sparse.method != "dense":
        _check_number(config, "sparse.sparsity", 0.0, 1.0, high_open=True)
    _check_positive_int(config, "sparse.update_every")
    _check_number(config, "sparse.drop_fraction", 0.0, 1.0)
    _check_number(config, "sparse.end_fraction", 0.0, 1.0)
    _check_positive_int(config, "sparse.drop_fraction_cosine_steps", allow_zero=True)
    _check_choice(config, "sparse.drop_count_rounding", DROP_COUNT_ROUNDINGS)
    try:
        structure = parse_structure(config.sparse.structure)
    except ValueError as error:
        raise _fail("sparse.structure", config.sparse.structure, str(error)) from None
    if config.sparse.method == "dense" and not structure.is_unstructured:
        raise _fail("sparse.structure", config.sparse.structure,
                    "method dense has no masks to structure; use 'unstructured' or a sparse method")
    _check_number(config, "sparse.prune_start_fraction", 0.0, 1.0, high_open=True)
    _check_number(config, "sparse.prune_end_fraction", 0.0, 1.0, high_open=True)
    if config.sparse.prune_start_fraction > config.sparse.prune_end_fraction:
        raise _fail("sparse.prune_start_fraction", config.sparse.prune_start_fraction,
                    f"pruning must start no later than it ends (sparse.prune_end_fraction = "
                    f"{config.sparse.prune_end_fraction}); equal fractions prune once")
    algorithm = ALGORITHMS.get(config.sparse.method)
    if algorithm is not None and structure.kind not in algorithm.supports_structures:
        raise _fail("sparse.structure", config.sparse.structure,
                    f"method {config.sparse.method} supports {', '.join(algorithm.supports_structures)} masks; "
                    "N:M, block and channel masks work with static, set and rigl")

    _check_positive_int(config, "moon.warmup_epochs", allow_zero=True)
    _check_number(config, "moon.ewma_mu", 0.0, 1.0, low_open=True)
    _check_number(config, "moon.alpha_init_factor", 0.0, float("inf"), low_open=True)
    _check_number(config, "moon.alpha_final", 0.0, float("inf"))
    _check_positive_int(config, "moon.averaging_epochs", allow_zero=True)
    _check_choice(config, "moon.averaging_trigger", TRIGGERS)
    _check_number(config, "moon.dropconnect_rate", 0.0, 1.0, high_open=True)
    _check_choice(config, "moon.head", HEADS)
    _check_choice(config, "moon.loss_weighting", WEIGHTINGS)
    _check_choice(config, "moon.alpha_tuning", ALPHA_TUNINGS)
    _check_number(config, "moon.fixed_alpha", 0.0, float("inf"))
    _check_number(config, "data.mixup_alpha", 0.0, float("inf"))
    _check_number(config, "moon.placeholder_mix_alpha", 0.0, float("inf"), low_open=True)
    _check_number(config, "moon.placeholder_weight", 0.0, float("inf"))
    if config.moon.placeholders and not (config.moon.enabled and config.moon.head == "k_plus_1"):
        raise _fail("moon.placeholders", True,
                    "placeholders are labelled with the K+1-th output: needs moon.enabled = True and moon.head = 'k_plus_1'")
    if config.moon.enabled and config.moon.head == "none" and config.moon.loss_weighting != "none":
        raise _fail("moon.loss_weighting", config.moon.loss_weighting,
                    "moon.head = 'none' has no unknown output to weight with; use 'none' (plain cross-entropy)")
    if config.moon.enabled and config.moon.dropconnect_rate > 0 and config.sparse.method == "dense":
        raise _fail("moon.dropconnect_rate", config.moon.dropconnect_rate,
                    "CigL's random mask acts on masked weights; use a sparse method (static, set, rigl) or 0")
    if config.moon.enabled and config.moon.dropconnect_rate > 0 and ALGORITHMS[config.sparse.method].straight_through:
        raise _fail("moon.dropconnect_rate", config.moon.dropconnect_rate,
                    f"CigL's random mask drops stored weights, which {config.sparse.method} keeps dense behind its "
                    "masks (straight-through); use a method that is not straight-through, or 0")
    if config.moon.enabled and config.train.epochs <= config.moon.warmup_epochs + 1:
        raise _fail(
            "moon.warmup_epochs", config.moon.warmup_epochs,
            f"MOON needs train.epochs ({config.train.epochs}) > warmup_epochs + 1 for alpha to ramp",
        )
    if config.moon.enabled and config.moon.averaging_epochs >= config.train.epochs:
        raise _fail(
            "moon.averaging_epochs", config.moon.averaging_epochs,
            f"must be smaller than train.epochs = {config.train.epochs}",
        )
    if config.moon.enabled and config.moon.averaging_epochs and ALGORITHMS[config.sparse.method].changes_masks:
        # Mask updates must end before the first snapshot (end of epoch E - averaging_epochs) so
        # that every snapshot has the same mask.
        limit = (config.train.epochs - config.moon.averaging_epochs) / config.train.epochs
        field = "sparse.prune_end_fraction" if config.sparse.method in PRUNING_METHODS else "sparse.end_fraction"
        if _get(config, field) >= limit:
            raise _fail(
                field, _get(config, field),
                f"mask updates must stop before weight averaging starts (end of epoch "
                f"{config.train.epochs - config.moon.averaging_epochs} of {config.train.epochs}): "
                f"use less than {limit:.4f}, or fewer moon.averaging_epochs",
            )
    _check_positive_int(config, "eval.ece_bins")
    if not isinstance(config.eval.scores, (tuple, list)):
        raise _fail("eval.scores", config.eval.scores, "must be a tuple of score names")
