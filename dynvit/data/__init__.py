"""Datasets and preprocessing: Fashion-MNIST from its IDX files, class-per-subfolder image
folders, and timm transforms from a model's data config."""
from .fashion_mnist import CLASSES as FASHION_MNIST_CLASSES, FashionMNIST, read_idx
from .folders import (
    IMAGE_SUFFIXES,
    ImageReadError,
    folder_classes,
    image_folder,
    load_image,
    skip_reason,
    skipped_files,
    split_indices,
)
from .transforms import SeededAugmentation, describe_input, model_decode_size, model_norm, model_transform
from .build import build_datasets, describe_split
