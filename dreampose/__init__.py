"""DreamPose: fashion image-to-video synthesis as a DVC + Prefect + MLflow pipeline."""

__version__ = "0.1.0"
