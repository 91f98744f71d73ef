"""Input pipelines: embedded TFDS datasets, TFDS catalog datasets, image folders.

```python
from mtlgen_jax import data
data.EMBEDDED                        # ('digits', 'photo_patches')
info = data.get_info(config.dataset)  # DatasetInfo; prepares an embedded dataset once
it = data.create_iterator(config.dataset, 'train', batch_size=64, seed=0)
batch = next(it)                     # {'image': uint8 [64, S, S, C], 'label': int32 [64]}
```

Importing this package registers the embedded builders with TFDS
(`mtlgen_digits`, `mtlgen_photo_patches`).
"""

from mtlgen_jax.data.digits import MtlgenDigits
from mtlgen_jax.data.photo_patches import MtlgenPhotoPatches
from mtlgen_jax.data.pipeline import create_iterator
from mtlgen_jax.data.sources import EMBEDDED, DatasetInfo, get_info

__all__ = [
    "EMBEDDED",
    "DatasetInfo",
    "MtlgenDigits",
    "MtlgenPhotoPatches",
    "create_iterator",
    "get_info",
]
