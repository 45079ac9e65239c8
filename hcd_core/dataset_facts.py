"""Facts about the built-in datasets, defined once for the torch-free code (the spec, the memory
estimate) and for `hcd_core.data`, which builds the datasets."""

from __future__ import annotations

# Classes of the datasets whose class count does not depend on the spec (imagefolder: its folders).
FIXED_NUM_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100, "digits": 10, "digits_hard": 10}

# The datasets held in memory as tensors (the others are read from files through a DataLoader).
TENSOR_DATASETS: tuple[str, ...] = ("digits", "digits_hard", "synthetic")

# synthetic: a learnable random task; these apply where the spec leaves a field out.
SYNTHETIC_NUM_CLASSES = 10
SYNTHETIC_TRAIN_SIZE = 2000
SYNTHETIC_VAL_SIZE = 500
SYNTHETIC_NOISE = 0.2  # std of the per-pixel Gaussian noise added to each sample
SYNTHETIC_BASE_MAX = 32  # images are generated at most this large (then upscaled per batch)

# sklearn's digits: 1797 grey 8x8 images, split 80/20 with a fixed seed (1437 train / 360 test).
DIGITS_NUM_SAMPLES = 1797
DIGITS_NUM_TRAIN = 1437
DIGITS_BASE_SIZE = 8
DIGITS_TRAIN_FRACTION = 0.8

# digits_hard: every digits image upscaled to this size, then DIGITS_HARD_COPIES fixed random affine
# copies of it with Gaussian noise (the originals' train/test split is kept).
DIGITS_HARD_BASE_SIZE = 16
DIGITS_HARD_COPIES = 5

# dataset.eval_split "holdout": this fraction of the training set, fixed, is evaluated on instead of
# the test set (and not trained on).
HOLDOUT_FRACTION = 0.2

# torchvision's CIFAR-10/100 hold both splits as uint8 arrays in memory.
CIFAR_NUM_SAMPLES = 60_000
CIFAR_IMAGE_BYTES = 32 * 32 * 3

# The largest uint8 image cache a file dataset is decoded into and held on the training device
# (data_pipeline "auto"); larger ones are read per sample by DataLoader workers.
DEVICE_CACHE_MAX_BYTES = 4 * 2**30
