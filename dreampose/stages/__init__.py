"""The pipeline's DVC stages, one module each, named as in ``dvc.yaml``: ``dreampose.stages.<stage>`` is the
stage's whole wrapper (``run``: read its config section, call the library with explicit paths, record the run in
MLflow), and ``bin/python -m dreampose.stages.<stage>`` is the stage's ``cmd`` (``main``).

Every stage module imports this package, so it holds this docstring and nothing else (tests/test_dvc_deps.py
checks): it cannot change an output, and is not a DVC dep.
"""
