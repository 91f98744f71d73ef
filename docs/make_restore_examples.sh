#!/bin/bash
# Makes docs/restore_examples.png: one held-out photograph (scikit-image's coffee, 1/4
# scale) degraded four ways and restored by `launch.py --mode restore` with a trained run.
#   bash docs/make_restore_examples.sh runs/default
set -euo pipefail
RUN=${1:-runs/default}
OUT=$(mktemp -d)
PY=${PYTHON:-.venv/bin/python}
$PY - "$OUT" <<'PY'
import sys, numpy as np
from PIL import Image
from skimage import data
out = sys.argv[1]
img = Image.fromarray(data.coffee())
img = img.resize((img.width // 4, img.height // 4), Image.BICUBIC)  # 150 x 100
clean = np.asarray(img)
rng = np.random.default_rng(0)
Image.fromarray(clean).save(f"{out}/clean.png")
noisy = np.clip(clean + rng.normal(0, 0.2 * 127.5, clean.shape), 0, 255).astype(np.uint8)
Image.fromarray(noisy).save(f"{out}/noisy.png")
img.resize((img.width // 2, img.height // 2), Image.BOX).save(f"{out}/small.png")
mask = np.zeros(clean.shape[:2], np.uint8); mask[30:60, 50:95] = 255
Image.fromarray(mask).save(f"{out}/mask.png")
holed = clean.copy(); holed[mask > 0] = 0
Image.fromarray(holed).save(f"{out}/holed.png")
img.convert("L").save(f"{out}/gray.png")
PY
$PY launch.py --workdir "$RUN" --mode restore --task denoise --input "$OUT/noisy.png" --output "$OUT/denoise.png"
$PY launch.py --workdir "$RUN" --mode restore --task super_resolve --input "$OUT/small.png" --output "$OUT/super_resolve.png"
$PY launch.py --workdir "$RUN" --mode restore --task inpaint --input "$OUT/holed.png" --mask "$OUT/mask.png" --output "$OUT/inpaint.png"
$PY launch.py --workdir "$RUN" --mode restore --task colorize --input "$OUT/gray.png" --output "$OUT/colorize.png"
$PY - "$OUT" <<'PY'
import sys, numpy as np
from PIL import Image
out = sys.argv[1]
def load(name, size=None):
    im = Image.open(f"{out}/{name}.png").convert("RGB")
    return np.asarray(im.resize(size, Image.NEAREST) if size else im)
size = Image.open(f"{out}/clean.png").size
rows = [np.concatenate([load(i, size), load(o, size)], 1) for i, o in
        (("noisy", "denoise"), ("small", "super_resolve"), ("holed", "inpaint"),
         ("gray", "colorize"))]
grid = np.concatenate(rows, 0)
Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(
    "docs/restore_examples.png")
print("wrote docs/restore_examples.png")
PY
