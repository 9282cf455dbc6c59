# The vendored diffusers test module only defines mixins; it is run through tests/models/test_pipeline_conformance.py.
collect_ignore = ["diffusers_common/test_pipelines_common.py"]
