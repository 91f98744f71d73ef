"""Input pipelines: embedded TFDS datasets, TFDS catalog datasets, image folders.

```python
from mtlgen_jax import data
data.EMBEDDED                        # ('digits', 'photo_patches')
info = data.get_info(config.dataset)  # DatasetInfo; prepares an embedded dataset once
it = data.create_iterator(config.dataset, 'train', batch_size=64, seed=0)
batch = next(it)                     # {'image': uint8 [64, S, S, C], 'label': int32 [64]}
```

`DatasetInfo` imports without TensorFlow; everything else loads TensorFlow on first
use, which also registers the embedded builders with TFDS (`mtlgen_digits`,
`mtlgen_photo_patches`).
"""

import importlib

from mtlgen_jax.data.info import DatasetInfo

_LAZY = {
    "EMBEDDED": "sources",
    "get_info": "sources",
    "create_iterator": "pipeline",
    "MtlgenDigits": "digits",
    "MtlgenPhotoPatches": "photo_patches",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"mtlgen_jax.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mtlgen_jax.data' has no attribute {name!r}")


__all__ = ["DatasetInfo", *_LAZY]
