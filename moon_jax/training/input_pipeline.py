"""The run's data: in-distribution train/test sets and OOD sets from a config, kept on device.

Small datasets (digits, CIFAR: 150 MB of uint8 pixels) are put on the device once; each step
gathers its batch there from a host-computed index row, so the host only sends 128 integers per
step and the accelerator is never starved by the input pipeline. The order of examples is a pure
function of (seed, epoch) (:func:`moon_jax.data.epoch_batch_indices`): resuming at any step sees
exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Iterator, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from moon_jax import data as data_lib
from moon_jax.data import ImageDataset
from moon_jax.devices import to_global
from moon_jax.metrics import split_group_prefix


@dataclasses.dataclass(frozen=True, eq=False)
class RunData:
    """Everything a run reads.

    Attributes:
      train: the in-distribution training set (in memory), or a TFDS source read on demand
        when ``config.data.stream_train`` is set.
      test: the in-distribution test set.
      ood: OOD sets by name, converted to the training image shape.
      num_classes: K.
      mean, std: per-channel normalisation constants of the ID data.
    """

    train: Union[ImageDataset, "data_lib.TfdsArraySource"]
    test: ImageDataset
    ood: dict[str, ImageDataset]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape


def _data_dir(config, name: str, source: str) -> Optional[str]:
    """The directory to read ``name`` from: the packed-file dir or the TFDS data dir."""
    if data_lib.source_kind(name, source) == "tfds":
        return config.data.tfds_data_dir or None
    return config.data.data_dir or None


def normalization_constants(name: str, train) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Known constants for ``name``, else the per-channel mean/std of (up to 10,000) training images."""
    try:
        return data_lib.normalization_for(name)
    except ValueError:
        if isinstance(train, ImageDataset):
            # A uniform draw: folder datasets are stored sorted by class.
            images = train.subset(10000).images
        else:
            images = train.get_batch(np.arange(min(len(train), 10000)))[0]
        pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        return tuple(pixels.mean(axis=0).tolist()), tuple(np.maximum(pixels.std(axis=0), 1e-3).tolist())


def load_id_data(config):
    """The in-distribution train and test sets named by ``config.data``.

    With ``config.data.stream_train`` the training set is a :class:`moon_jax.data.TfdsArraySource`
    read batch by batch (for sets that do not fit in memory, like ImageNet).
    """
    name, source = config.data.dataset, config.data.source
    kwargs = dict(data_dir=_data_dir(config, name, source), source=source)
    if config.data.image_size:
        kwargs["image_size"] = config.data.image_size
    if config.data.stream_train:
        tfds_name = name[len("tfds:"):] if name.startswith("tfds:") else name
        train = data_lib.TfdsArraySource(tfds_name, "train", data_dir=config.data.tfds_data_dir or None)
        test_split = "validation" if tfds_name == "imagenet2012" else "test"
        test = data_lib.load_tfds(
            tfds_name, test_split, data_dir=config.data.tfds_data_dir or None,
            num_examples=config.data.num_test_examples or None,
        )
        return train, test
    train = data_lib.load_dataset(
        config.data.dataset, "train", num_examples=config.data.num_train_examples or None, **kwargs
    )
    test = data_lib.load_dataset(
        config.data.dataset, "test", num_examples=config.data.num_test_examples or None, **kwargs
    )
    return train, test


def ood_display_names(names) -> list[str]:
    """The name each OOD set is reported under: registered names as given, a path as its folder /
    file name (:func:`moon_jax.data.path_dataset_name`), with ``_2``, ``_3``, ... appended when
    two paths end in the same name; a ``near:`` / ``far:`` group prefix is kept in front."""
    out: list[str] = []
    for name in names:
        group, name = split_group_prefix(name)
        label = data_lib.path_dataset_name(name) if data_lib.source_kind(name) == "path" else name
        label = f"{group}:{label}" if group else label
        base, n = label, 1
        while label in out:
            n += 1
            label = f"{base}_{n}"
        out.append(label)
    return out


def load_ood_data(config, image_shape) -> dict[str, ImageDataset]:
    """The OOD sets of ``config.data.ood_datasets``, converted to ``image_shape``, by their
    display names (:func:`ood_display_names`)."""
    out = {}
    names = config.data.ood_datasets
    for label, name in zip(ood_display_names(names), names):
        name = split_group_prefix(name)[1]
        out[label] = data_lib.load_dataset(
            name,
            "test",
            data_dir=_data_dir(config, name, "auto"),
            source="auto",
            image_shape=image_shape,
            num_examples=config.data.num_ood_examples or None,
            seed=config.seed,
        )
    return out


def load_run_data(config, with_ood: bool = True) -> RunData:
    """Loads every dataset the config names (the OOD sets too unless ``with_ood`` is false)."""
    train, test = load_id_data(config)
    if isinstance(train, ImageDataset):
        num_classes = max(train.num_classes, int(train.labels.max()) + 1)
    else:
        num_classes = train.num_classes
    mean, std = normalization_constants(config.data.dataset, train)
    ood = load_ood_data(config, train.image_shape) if with_ood else {}
    return RunData(train=train, test=test, ood=ood, num_classes=num_classes, mean=mean, std=std)


class DeviceDataset:
    """A dataset held on the device(s) with a jitted batch gather.

    ``batch(indices)`` returns ``(images uint8, labels int32)`` for one row of indices, sharded
    along the batch axis with ``batch_sharding`` (replicated data, split batch);
    ``epoch_batches`` yields them for the rows of an epoch.
    """

    def __init__(self, dataset: ImageDataset, replicated, batch_sharding):
        self.size = len(dataset)
        self.images = to_global(dataset.images, replicated)
        self.labels = to_global(dataset.labels, replicated)
        self._replicated = replicated
        self._gather = jax.jit(
            lambda images, labels, idx: (jnp.take(images, idx, axis=0), jnp.take(labels, idx, axis=0)),
            out_shardings=(batch_sharding, batch_sharding),
        )

    def batch(self, indices: np.ndarray):
        """One batch, ``(images uint8, labels int32)``, for one row of example indices."""
        return self._gather(self.images, self.labels, to_global(np.asarray(indices, np.int32), self._replicated))

    def epoch_batches(self, indices: np.ndarray, first: int, epoch: int) -> Iterator:
        """Batches for rows ``first..`` of an epoch's index matrix."""
        del epoch
        for row in indices[first:]:
            yield self.batch(row)


class HostStreamDataset:
    """Training batches read on host threads from a random-access source, prefetched.

    For sets that do not fit in memory (ImageNet through TFDS). Reads run ``prefetch`` batches
    ahead on a thread pool (decoding releases the GIL), and each batch is put on the devices with
    ``batch_sharding``. With ``random_crops`` every image gets a random resized crop seeded by
    (run seed, epoch, index), so a resumed run reads exactly the same pixels.
    """

    def __init__(self, source, batch_sharding, seed: int, random_crops: bool, prefetch: int = 4, workers: int = 8):
        self.source = source
        self.size = len(source)
        self._sharding = batch_sharding
        self._seed = seed
        self._random_crops = random_crops
        self._prefetch = prefetch
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)

    def _read(self, row: np.ndarray, epoch: Optional[int]):
        """Reads this process's part of a global batch row (all of it with one process)."""
        part = len(row) // jax.process_count()
        row = row[jax.process_index() * part:(jax.process_index() + 1) * part]
        crop_seed = self._seed * 100_003 + epoch if (self._random_crops and epoch is not None) else None
        return self.source.get_batch(row, crop_seed=crop_seed)

    def _to_device(self, host_batch):
        images, labels = host_batch
        return (
            jax.make_array_from_process_local_data(self._sharding, images),
            jax.make_array_from_process_local_data(self._sharding, labels),
        )

    def batch(self, indices: np.ndarray, epoch: Optional[int] = None):
        """One batch for one row of indices, read now (``epoch`` seeds the random crops)."""
        return self._to_device(self._read(np.asarray(indices), epoch))

    def epoch_batches(self, indices: np.ndarray, first: int, epoch: int) -> Iterator:
        """Batches for rows ``first..`` of an epoch's index matrix, each read ``prefetch`` batches
        ahead on the thread pool and released once yielded (host memory stays bounded)."""
        rows = list(indices[first:])
        futures = [self._pool.submit(self._read, row, epoch) for row in rows[: self._prefetch]]
        for i in range(len(rows)):
            if i + self._prefetch < len(rows):
                futures.append(self._pool.submit(self._read, rows[i + self._prefetch], epoch))
            yield self._to_device(futures[i].result())
            futures[i] = None
