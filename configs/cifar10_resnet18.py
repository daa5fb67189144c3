"""CIFAR-10 / ResNet-18 with the MOON reference schedule (github StevenBoys/MOON README).

100 epochs, batch 128, SGD (Nesterov momentum 0.9, weight decay 5e-4), learning rate 0.1 x a
cosine multiplier from 1.2 to 0.08 over 80 epochs, then constant for the last 20, during which the
weights are averaged (MOON); RigL at 90% sparsity with ERK, mask updates every 80 iterations in the
first 70 epochs, drop fraction 0.3 with cosine decay. MOON: K+1 = 11 outputs, 5 warm-up epochs,
alpha from EWMA/64 up to 1.0. (These are base_config's defaults: moon_jax/training/config.py.)

Data: the packed CIFAR-10 in ../shared/data (or MOON_JAX_DATA_DIR / --config.data.data_dir);
--config.data.source=tfds reads TFDS's cifar10 instead. OOD sets: Tiny ImageNet (resize), MNIST,
the Textures subset, Gaussian and uniform noise.

Baselines: --config.moon.enabled=False (plain RigL); --config.sparse.method=set / static / dense.
"""
from moon_jax.training.config import base_config


def get_config():
    config = base_config()  # base_config is the reference recipe
    config.data.dataset = "cifar10"
    config.data.ood_datasets = ("tin_resize", "mnist", "textures_subset", "gaussian_noise", "uniform_noise")
    return config
