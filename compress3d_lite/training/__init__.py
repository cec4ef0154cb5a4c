"""The training machinery every stage shares, knowing no stage: ``loop.py`` (``fit``, the one loop,
and ``TrainingStep``, the optimiser step), ``run_folder.py`` (what a run does with its folder: the
claim, the data, the resume checks, the training checkpoint, caches, the log) and ``measure.py``
(parameters, activations, FLOPs and memory of one step: what a dry run reports).
"""
