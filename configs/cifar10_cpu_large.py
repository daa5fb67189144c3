"""CIFAR-10 / ResNet-18: the next scale up from ``cifar10_cpu.py``, four times the training images.

Scale: the same network (ResNet-18 at base width 16, about 70 k active weights at 90% ERK
sparsity), augmentation (flips), 40 epochs and phases as ``cifar10_cpu.py``, on a fixed uniform
subset of 20,480 of the 50,000 CIFAR-10 training images (160 steps of 128 an epoch; the subset
holds the 5,120 images of the smaller scale). Every phase of the reference recipe keeps its share
of the run: MOON's warm-up 2 of 40 epochs, alpha from EWMA/64 up to 1.0, the cosine learning rate
over the first 32 epochs and the constant tail over the last 8, in which the weights are averaged
once per epoch end; RigL mask updates every 33 iterations (about 5 an epoch, as the reference's
every 80 of 390) in the first 70% of the iterations with the cosine-decayed drop fraction 0.3.

Why this scale: at 5,120 images MOON + RigL did not beat RigL on OOD AUROC, and RigL was no worse
than dense training there, so the sparse network had no gap for MOON to win back (the paper's
premise). With the width fixed, more images make the 70 k active weights the binding limit (about
3.4 weights an image, the paper about 22), the regime in which sparse training is expected to cost
reliability. A run is 6,400 steps, about 4x the smaller scale (about 50 minutes on 2 idle CPU
cores): the largest step that keeps a 3-seed pair of methods within a few hours of background work.
The trade-off is the fit: the network may no longer reach 100% training accuracy before the
averaging phase, so the report prints the training accuracy beside the test numbers. No
hyper-parameter was tuned on the report's OOD sets.

Data: the packed CIFAR-10 in ../shared/data (or MOON_JAX_DATA_DIR). OOD: Tiny ImageNet (resize),
MNIST, the Textures subset (the headline mean), Gaussian and uniform noise (a separate column).

    python reproduce.py --config=configs/cifar10_cpu_large.py --methods=rigl,moon_rigl \\
        --seeds=0,1,2 --root=runs/repro_cpu_large --output=docs/REPRODUCTION_CPU_LARGE.md --noplots
"""
from moon_jax.training.config import scaled_reference_recipe

EPOCHS = 40
STEPS_PER_EPOCH = 160  # 20,480 images / batch 128


def get_config():
    config = scaled_reference_recipe(EPOCHS, STEPS_PER_EPOCH)  # reference phases in proportion
    config.data.dataset = "cifar10"
    config.data.augment = "flip"
    config.model.width = 16
    config.train.progress_bar = False
    return config
