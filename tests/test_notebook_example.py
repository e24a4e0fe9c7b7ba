"""examples/quickstart.ipynb runs end to end in a real kernel and shows the video."""

from __future__ import annotations

import base64
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def _outputs(nb):
    for cell in nb.cells:
        for out in cell.get("outputs", ()):
            yield cell, out


@pytest.mark.slow
def test_quickstart_notebook_runs_and_shows_frames(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel (and the cluster it starts) work in tmp_path: state stores land there.
    monkeypatch.setenv("DASK_TURBOSERVE__STATE__STORE", str(tmp_path / "state"))
    monkeypatch.setenv("DASK_TURBOSERVE__CLUSTER__DASHBOARD_ADDRESS", "127.0.0.1:0")
    client = nbclient.NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    finally:  # the executed notebook, for a look when something fails
        artifacts = NOTEBOOK.parents[1] / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        nbformat.write(nb, artifacts / "quickstart.ipynb")

    errors = [out for _, out in _outputs(nb) if out.output_type == "error"]
    assert not errors, errors

    gifs = [
        base64.b64decode(out.data["image/gif"])
        for _, out in _outputs(nb)
        if out.output_type in ("execute_result", "display_data") and "image/gif" in out.get("data", {})
    ]
    assert gifs and all(g[:6] == b"GIF89a" for g in gifs)

    html = [out.data["text/html"] for _, out in _outputs(nb)
            if out.output_type in ("execute_result", "display_data") and "text/html" in out.get("data", {})]
    session_cards = [h for h in html if "turboserve-session" in h]
    assert any("data:video/mp4;base64," in h for h in session_cards), "no session card with its video"
    assert any("turboserve-sessions" in h and "individual-turboserve" in h for h in html), "no server table"

    text = "".join(out.get("text", "") for _, out in _outputs(nb) if out.output_type == "stream")
    assert "after suspend: suspended" in text
    assert "after resume:" in text and "next chunk: 2" in text
