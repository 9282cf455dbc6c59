"""``catalog.mlflow_model``: versions registered before the wrapper moved into ``catalog/`` still load."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

# What such a version's python_model.pkl holds: the wrapper class by its old module path, then an instance of it.
OLD_PICKLE = b"\x80\x02cdreampose.mlflow_model\nDreamPoseSubjectModel\n)\x81."


def test_a_wrapper_pickled_under_the_old_module_path_loads_in_a_fresh_process():
    code = (
        "import pickle, sys; m = pickle.loads(sys.stdin.buffer.read()); "
        "print(type(m).__module__, type(m).__name__, type(m).__mro__[1].__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=OLD_PICKLE, capture_output=True, cwd=REPO, timeout=300, check=True
    )
    module, name, base = out.stdout.decode().split()
    assert (module, name) == ("dreampose.catalog.mlflow_model", "DreamPoseSubjectModel")
    assert base.startswith("mlflow.pyfunc")
