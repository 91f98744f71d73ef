"""notebooks/quickstart.ipynb executes top to bottom (tiny setting)."""

import os

import _data
import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLGEN_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("MTLGEN_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("MTLGEN_NOTEBOOK_DATA_DIR", _data.shared())
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # fast compiles
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # one picture per task of the default config
    text = "".join(o.get("text", "") for o in outputs)
    assert "psnr_baseline" in text
