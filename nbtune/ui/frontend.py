"""Which notebook frontend the kernel serves, and what that decides.

Output sent from a thread reaches the notebook in JupyterLab and Notebook 7
(over widget comms), but not in Colab or VS Code; and Colab renders each cell's
outputs in a document of their own. So the frontend decides whether a run goes
to a worker thread (`default_background`), which live chart is shown, and how
plotly.js reaches the charts (`nbtune.ui.outputs`).

Nothing here imports IPython or ipywidgets: the kernel is read from
`sys.modules`, so the core can ask without loading either.
"""

from __future__ import annotations

import os
import sys

#: Frontends that get charts as HTML (plotly.js sent by nbtune, no FigureWidget, runs in the foreground).
HTML_FRONTENDS = ("colab", "vscode")


def in_jupyter_kernel() -> bool:
    """True inside an IPython kernel (JupyterLab, Notebook, Colab, VS Code)."""
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def frontend() -> str:
    """'colab', 'vscode', 'jupyter' or 'script': where widgets can (not) update from a thread."""
    if "google.colab" in sys.modules:
        return "colab"
    if not in_jupyter_kernel():
        return "script"
    if "VSCODE_PID" in os.environ or "VSCODE_CWD" in os.environ:
        return "vscode"
    return "jupyter"


def default_background() -> bool:
    """Runs and app actions go to a worker thread only where its output reaches the notebook."""
    return frontend() == "jupyter"
