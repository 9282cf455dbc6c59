"""Commands around the pipeline, run by ``dreampose <command>`` (``dreampose.cli``) or by the pipeline flow before
its first stage, never by a stage's library code: ``preflight`` (are the inputs in place), ``eval_subjects`` (the
protocol's evaluation subjects into ``params.yaml``), ``report`` (our scores beside the paper's Table 1),
``ablations`` (Table 2 as DVC experiments) and ``remote`` (the DVC remote a second workspace pulls from)."""
