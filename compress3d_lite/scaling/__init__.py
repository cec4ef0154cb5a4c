"""Tools for going from the toy set on a CPU to the paper's scale on GPUs; none is a stage.

    dry_run.py           what a stage costs at a preset: parameters, memory per GPU, FLOPs, time
                         (``train STAGE --preset P --dry-run``)
    precision_check.py   every stage under 16-bit autocast at a GPU preset's structure, shrunk
                         (``train precision-check``)
    quality_filter.py    which downloaded objects are worth training on: an MLP over shape
                         embeddings (``data quality-filter``, ``data objaverse --filter``)

docs/scaling.md says how they are used.
"""
