"""One module per DVC stage, each a stage's whole wrapper: read its config section, call the library with
explicit paths, record the run in MLflow. ``dreampose.stages`` looks them up by name for the CLI."""
