"""Which parameters are sparse: a rule over parameter paths, not a list.

The rule follows the reference code (MOON's ``sparselearning`` package, from the
rigl-reproducibility project, ``Masking.add_module``): every weight tensor is masked except
biases and normalisation parameters. In a Flax parameter tree that means: a leaf is sparse when
it is a ``kernel`` with two or more dimensions (conv and dense kernels); ``bias``, BatchNorm /
LayerNorm ``scale`` and ``bias`` stay dense. Whether the first conv, the 1x1 shortcuts or the
classifier end up *fully* dense is then decided by the layer-wise distribution (ERK makes all of
them dense on ResNet-18 at 80-90% sparsity), exactly as in the reference.

Two options force layers dense regardless of the distribution: ``dense_first_layer`` (the
reference's ``random``/uniform init does this for the first conv) and ``dense_last_layer`` (the
classifier). Models in :mod:`moon_jax.models` name their first layer ``stem`` and their
classifier ``head`` so the rule can find them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import jax

PyTree = Any

KERNEL_NAMES = ("kernel",)


@dataclasses.dataclass(frozen=True)
class SparsityRule:
    """Decides per parameter leaf whether it carries a mask.

    Attributes:
      dense_first_layer: keep the layer named in ``first_layer_names`` dense.
      dense_last_layer: keep the classifier (``last_layer_names``) dense.
      first_layer_names: module names that identify the first layer.
      last_layer_names: module names that identify the classifier.
    """

    dense_first_layer: bool = False
    dense_last_layer: bool = False
    first_layer_names: tuple[str, ...] = ("stem",)
    last_layer_names: tuple[str, ...] = ("head",)


def path_to_name(path: Iterable[Any]) -> str:
    """Turns a ``tree_flatten_with_path`` key path into ``'block1/conv1/kernel'``."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def is_sparsifiable(path: Iterable[Any], leaf: Any, rule: SparsityRule) -> bool:
    """True when the rule gives this leaf a mask (a conv/dense kernel not forced dense)."""
    names = path_to_name(path).split("/")
    if names[-1] not in KERNEL_NAMES or getattr(leaf, "ndim", 0) < 2:
        return False
    if rule.dense_first_layer and any(n in rule.first_layer_names for n in names[:-1]):
        return False
    if rule.dense_last_layer and any(n in rule.last_layer_names for n in names[:-1]):
        return False
    return True


def sparsifiable_shapes(params: PyTree, rule: SparsityRule) -> dict[str, tuple[int, ...]]:
    """Maps the name of every sparsifiable leaf to its shape, in tree-flatten order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {
        path_to_name(path): tuple(leaf.shape)
        for path, leaf in flat
        if is_sparsifiable(path, leaf, rule)
    }


def leaf_names(params: PyTree) -> list[str]:
    """Names of all leaves of ``params`` in tree-flatten order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return [path_to_name(path) for path, _ in flat]
