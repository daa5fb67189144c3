"""The embedded offline default: MOON + RigL at 90% sparsity on scikit-learn's 8x8 digits.

Runs on a laptop CPU in well under a minute, with no download: ID = the bundled digits (fixed
1347 / 450 split), OOD = 8x8 patches of scikit-learn's sample photos and Gaussian / uniform noise.
"""
from moon_jax.training.config import base_config


def get_config():
    config = base_config()
    config.seed = 0
    config.model.name = "small_cnn"

    config.data.dataset = "digits"
    config.data.augment = "none"  # 8x8 digits: a 4-pixel crop would destroy them
    config.data.ood_datasets = ("digits_photos", "gaussian_noise", "uniform_noise")

    config.train.epochs = 60
    config.train.batch_size = 64
    config.train.eval_batch_size = 450
    config.train.base_lr = 0.1
    config.train.constant_lr_epochs = 10
    config.train.log_every_steps = 20
    config.train.eval_every_epochs = 20
    config.train.checkpoint_every_epochs = 20

    config.sparse.method = "rigl"
    config.sparse.sparsity = 0.9
    config.sparse.distribution = "erk"
    config.sparse.update_every = 20
    config.sparse.end_fraction = 0.75

    config.moon.enabled = True
    config.moon.warmup_epochs = 5
    config.moon.averaging_epochs = 10
    return config
