"""The tutorial notebooks: committed executed, small, following the outline, and they run
top to bottom without an error in a kernel of the Python that runs the tests."""

import json
import os
import pathlib
import re
import shutil
import sys

import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
MAX_BYTES = 1_500_000

# Each notebook's outline section: its title (a level-1 heading) and its subsections
# (level-2 headings), in this order.
OUTLINE = {
    "01_mean_squared_error.ipynb": [
        "Mean Squared Error (MSE) Loss",
        "Understanding MSE as a loss function for regression",
        "How to compute MSE and its derivatives",
        "PyTorch/TensorFlow implementation of MSE",
    ],
    "02_cross_entropy.ipynb": [
        "Cross-Entropy Loss",
        "Why cross-entropy is used for classification tasks",
        "Binary vs multiclass cross-entropy",
        "Softmax with cross-entropy loss function",
    ],
    "03_contrastive_loss.ipynb": [
        "Contrastive Loss",
        "What is contrastive loss and its use in metric learning",
        "Understanding Siamese networks and how contrastive loss fits in",
        "Implementing contrastive loss with PyTorch/TensorFlow",
    ],
    "04_language_model.ipynb": [
        "Training a language model",
        "The data and the tokenizer",
        "The model",
        "Why the loss is fused",
        "Training and sampling",
    ],
}
NAMES = sorted(OUTLINE)
# Notebooks whose training loop outweighs their compiles run at XLA's default LLVM
# optimization level rather than the suite's level 0 (tests/conftest.py): measured on
# 2 cores, notebook 04's training cell takes 10 s there against 21 s at level 0.
COMPUTE_BOUND = {"04_language_model.ipynb"}


def _load(name: str) -> dict:
    return json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def _headings(notebook: dict) -> list[tuple[int, str]]:
    """(level, text) of every markdown heading, anchors and emoji included in the text."""
    found = []
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            for line in _source(cell).splitlines():
                match = re.match(r"(#{1,6})\s+(.*\S)\s*$", line)
                if match:
                    found.append((len(match.group(1)), match.group(2)))
    return found


def test_every_outline_notebook_exists():
    missing = [name for name in NAMES if not (NOTEBOOKS / name).is_file()]
    assert not missing, f"missing notebooks: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_small(name):
    size = (NOTEBOOKS / name).stat().st_size
    assert size < MAX_BYTES, f"{name} is {size} bytes"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_follows_the_outline(name):
    headings = _headings(_load(name))
    positions = []
    levels = [1] + [2] * (len(OUTLINE[name]) - 1)
    for level, title in zip(levels, OUTLINE[name], strict=True):
        matches = [i for i, (lvl, text) in enumerate(headings)
                   if lvl == level and text.endswith(title)]
        assert matches, f"{name} has no level-{level} heading {title!r}; it has {headings}"
        positions.append(matches[0])
    assert positions == sorted(positions), f"{name}: the outline headings are out of order"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_executed(name):
    notebook = _load(name)
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code
    # Run once, top to bottom: execution counts 1, 2, 3, ...
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1))
    outputs = [o for c in code for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"], f"{name} stores an error"
    assert not [o for o in outputs if o.get("name") == "stderr"], f"{name} stores stderr"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} stores no plot"


def _python3_kernelspec(root: pathlib.Path) -> pathlib.Path:
    """A "python3" kernelspec that runs this interpreter, whatever else is installed."""
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)",
        "language": "python",
    }))
    return root


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path, monkeypatch):
    import ipykernel  # noqa: F401  (the kernel the notebooks run in)
    import nbclient
    import nbformat

    # JUPYTER_PATH comes first in the kernelspec search, before the user's and the
    # system's kernels.
    monkeypatch.setenv("JUPYTER_PATH", str(_python3_kernelspec(tmp_path / "jupyter")))
    # The kernel is a user's: without the 4 fake CPU devices of conftest.py.
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   os.environ.get("XLA_FLAGS", "")).strip()
    if name in COMPUTE_BOUND:
        flags = re.sub(r"--xla_backend_optimization_level=\d+", "", flags).strip()
    monkeypatch.setenv("XLA_FLAGS", flags)

    work = tmp_path / "notebooks"
    work.mkdir()
    copy = work / name
    shutil.copy(NOTEBOOKS / name, copy)
    notebook = nbformat.read(copy, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(
        "import os, sys; print(os.path.realpath(sys.executable)); print(sys.prefix)"))

    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    executable, prefix = notebook.cells[-1].outputs[0]["text"].split()
    assert (executable, prefix) == (os.path.realpath(sys.executable), sys.prefix)
