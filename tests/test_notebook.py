"""examples/inspect.ipynb runs clean, top to bottom, in a fresh kernel, and its outputs hold
the report's table of saved tensors and its memory-timeline picture."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "inspect.ipynb"


def _outputs(nb: nbformat.NotebookNode, mime: str) -> list[str]:
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if mime in data:
                found.append(data[mime])
            elif mime == "text/plain" and out.get("output_type") == "stream":
                found.append(out.get("text", ""))
    return found


def test_inspect_notebook_runs_and_shows_table_and_picture(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), \
        "commit examples/inspect.ipynb without outputs (the test suite executes it)"
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # the kernel inherits it
    # kernel "python3" with argv[0] "python" runs on this interpreter (jupyter_client swaps in
    # sys.executable), so the kernel sees the same packages as the test
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, if a cell fails
    nbformat.write(nb, tmp_path / "inspect.executed.ipynb")  # kept by pytest for a look

    html = _outputs(nb, "text/html")
    assert len(html) == 2, "expected two rich reports (the compiled graph and the tight budget)"
    for page in html:
        assert '<table class="fxopt-tensors">' in page
        assert "<svg" in page and 'class="fxopt-timeline"' in page, \
            "report has no memory-timeline picture: was the graph planned (report.plan)?"
        assert "fxopt plan" in page and "budget" in page
    text = "\n".join(_outputs(nb, "text/plain"))
    assert "graph(s) compiled" in text and "budget 0.5: predicted peak" in text
    assert "== predicted memory timeline ==" in text
