"""ImageNet-1k / ResNet-50 (224x224) with MOON + RigL at 80% sparsity.

Data: TFDS imagenet2012 (a manual download: put ILSVRC2012_img_{train,val}.tar in
<tfds_data_dir>/downloads/manual, run ``tfds build imagenet2012 --file_format=array_record``
where TensorFlow is installed, then pass --config.data.tfds_data_dir). Training images are
streamed from disk on host threads with random resized crops and flipped on the device;
evaluation uses resize 256 + centre crop 224 on the validation split. K+1 = 1001 outputs.

Schedule: RigL's ImageNet recipe (Evci et al. 2020, section 4.1: 100 epochs, mask updates every
100 iterations until 75% of training with drop fraction 0.3, ERK) with the MOON reference's
learning-rate shape (0.1 x cosine 1.2 -> 0.08, then constant for the last 20 epochs, during which
the weights are averaged). The reference's ImageNet pipeline applies no sparsity, so
this is moon-jax's own recipe. Scale base_lr linearly with the
global batch size (0.1 per 256 images) on pods. OOD sets: Textures (TFDS dtd) and Places365 at
224x224 are the usual far-OOD sets; name them in data.ood_datasets when they are prepared.
"""
from moon_jax.training.config import base_config


def get_config():
    config = base_config()
    config.model.name = "resnet50"
    config.data.dataset = "imagenet2012"
    config.data.source = "tfds"
    config.data.stream_train = True
    config.data.random_resized_crop = True
    config.data.augment = "flip"
    config.data.ood_datasets = ("gaussian_noise", "uniform_noise")
    config.train.epochs = 100
    config.train.batch_size = 256
    config.train.eval_batch_size = 250
    config.train.base_lr = 0.1
    config.train.weight_decay = 1e-4
    config.train.constant_lr_epochs = 20
    config.train.log_every_steps = 100
    config.train.eval_every_epochs = 5
    config.sparse.method = "rigl"
    config.sparse.sparsity = 0.8
    config.sparse.distribution = "erk"
    config.sparse.update_every = 100
    config.sparse.end_fraction = 0.75
    config.moon.enabled = True
    config.moon.averaging_epochs = 20
    return config
