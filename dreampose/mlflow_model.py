"""The import path that catalog models registered before ``dreampose.catalog.mlflow_model`` existed still name.

MLflow pickles a ``pyfunc`` wrapper by its module path, so each such version's ``python_model.pkl`` refers to
``dreampose.mlflow_model.DreamPoseSubjectModel``; this alias lets ``mlflow.pyfunc.load_model`` keep loading them.
New models name ``dreampose.catalog.mlflow_model``. Nothing in the package imports this module.
"""

from dreampose.catalog.mlflow_model import DreamPoseSubjectModel

__all__ = ["DreamPoseSubjectModel"]
