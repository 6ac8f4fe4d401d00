"""The app's headless tests again, under the ipywidgets 7 that Colab ships (7.7.1).

Colab pins ipywidgets 7 and requiring 8 there forces a runtime restart, so the
app keeps to APIs both support (or adapts: tooltips, FileUpload values). This
installs ipywidgets 7.7.1 into a temporary folder (from the package index), puts
it first on the path of a child pytest, and runs tests/test_ui.py there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

IPYWIDGETS_7 = "ipywidgets==7.7.1"
TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
def test_app_under_ipywidgets_7(tmp_path):
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                              IPYWIDGETS_7, "ipython_genutils"], capture_output=True, text=True)
    if install.returncode != 0:
        pytest.skip(f"could not install {IPYWIDGETS_7} from the package index: {install.stderr[-500:]}")
    code = (f"import sys; sys.path[:0] = [{str(target)!r}, {str(TESTS)!r}]; import ipywidgets, pytest; "
            "assert ipywidgets.__version__ == '7.7.1', ipywidgets.__version__; "
            f"sys.exit(pytest.main(['-q', '-x', '-p', 'no:cacheprovider', '-W', 'ignore::DeprecationWarning', "
            f"{str(TESTS / 'test_ui.py')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=TESTS.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
