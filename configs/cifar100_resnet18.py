"""CIFAR-100 / ResNet-18 with the MOON reference schedule (K+1 = 101 outputs).

CIFAR-100 is read from TFDS: prepare it where TFDS can download (``tfds build cifar100
--file_format=array_record --data_dir=DIR``), then pass --config.data.tfds_data_dir=DIR (or set
TFDS_DATA_DIR). OOD sets: CIFAR-10 (near-OOD, the packed copy), Tiny ImageNet (resize), MNIST, the
Textures subset, Gaussian and uniform noise; their packed files are looked up in MOON_JAX_DATA_DIR
or ../shared/data.
"""
from moon_jax.training.config import base_config


def get_config():
    config = base_config()  # base_config is the reference recipe
    config.data.dataset = "cifar100"
    config.data.ood_datasets = ("cifar10", "tin_resize", "mnist", "textures_subset", "gaussian_noise", "uniform_noise")
    return config
