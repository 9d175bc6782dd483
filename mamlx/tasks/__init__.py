"""mamlx.tasks: few-shot data loaders and on-device episode samplers."""

from mamlx.tasks.base import Sampler, vmap_sample
from mamlx.tasks.cache import cache_dir
from mamlx.tasks.download import download_url, sha256_file
from mamlx.tasks.fewshot import FewShotSampler, fewshot_sampler
from mamlx.tasks.miniimagenet import (
    MiniImageNetSplit,
    load_miniimagenet,
    read_miniimagenet_images,
    read_split_csv,
)
from mamlx.tasks.omniglot import (
    OMNIGLOT_ALPHABETS,
    OMNIGLOT_ARCHIVES,
    OmniglotChars,
    OmniglotSplit,
    fetch_omniglot_archive,
    load_omniglot,
    load_omniglot_npz,
    load_omniglot_tfds,
    load_omniglot_zip,
    omniglot_split,
    preprocess_omniglot,
)
from mamlx.tasks.omniglot_preprocess import read_omniglot_images
from mamlx.tasks.sine import Sinusoid, sinusoid

__all__ = [
    "OMNIGLOT_ALPHABETS",
    "OMNIGLOT_ARCHIVES",
    "FewShotSampler",
    "MiniImageNetSplit",
    "OmniglotChars",
    "OmniglotSplit",
    "Sampler",
    "Sinusoid",
    "cache_dir",
    "download_url",
    "fetch_omniglot_archive",
    "fewshot_sampler",
    "load_miniimagenet",
    "load_omniglot",
    "load_omniglot_npz",
    "load_omniglot_tfds",
    "load_omniglot_zip",
    "omniglot_split",
    "preprocess_omniglot",
    "read_miniimagenet_images",
    "read_omniglot_images",
    "read_split_csv",
    "sha256_file",
    "sinusoid",
    "vmap_sample",
]
