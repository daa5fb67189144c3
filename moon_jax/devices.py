"""Device placement for data parallelism: the mesh, global arrays, and device functions.

One 1-D mesh with axis ``data`` over every device JAX sees (one CPU, one GPU, a TPU slice or a
multi-host pod): batches are split along it, everything else (parameters, masks, optimizer state)
is replicated. This module is the only place that knows how arrays get onto devices.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


class DataParallel:
    """The mesh and its two shardings: ``batch`` (split over the data axis) and ``replicated``.

    ``DataParallel()`` spans every device; pass a ``mesh`` to use a subset.
    """

    def __init__(self, mesh: Optional[Mesh] = None):
        self.mesh = mesh if mesh is not None else Mesh(np.asarray(jax.devices()), (DATA_AXIS,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))


def to_global(array: np.ndarray, sharding) -> jax.Array:
    """A host array (identical on every process) as a global array with ``sharding``.

    Works with one process and with many (multi-host TPU pods): each process fills only the
    shards of its own devices.
    """
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def max_over_processes(mesh: Mesh) -> Callable[[int], jax.Array]:
    """``value -> the largest of every process's value``, compiled once: each process passes its
    own ``value`` (e.g. "I was asked to stop"), and all get the same replicated scalar back, still
    on the device (start its copy and read it later to not wait). Every process must call it at
    the same point of the program, like any computation over the mesh."""
    rows = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    largest = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))

    def call(value: int) -> jax.Array:
        local = np.full((len(mesh.local_devices),), value, np.int32)
        return largest(jax.make_array_from_process_local_data(rows, local))

    return call


def batched_device_function(fn: Callable, mesh: Optional[Mesh] = None) -> Callable:
    """``(variables, host images) -> fn(variables, images)``, compiled once.

    ``variables`` is an argument (not a constant baked into the compiled code), so the same
    compiled function serves every set of weights of the same shapes. With a ``mesh`` of several
    devices each host batch is split over them and the outputs come back replicated, so every
    process of a multi-host job can read them.
    """
    if mesh is None or mesh.size == 1:
        return jax.jit(fn)
    batch = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    jitted = jax.jit(fn, out_shardings=NamedSharding(mesh, PartitionSpec()))
    return lambda variables, images: jitted(variables, to_global(images, batch))


def on_devices(fn: Callable, variables, mesh: Optional[Mesh] = None) -> Callable[[np.ndarray], object]:
    """``images -> fn(variables, images)`` for fixed ``variables`` (see
    :func:`batched_device_function`)."""
    compiled = batched_device_function(fn, mesh)
    return lambda images: compiled(variables, images)
