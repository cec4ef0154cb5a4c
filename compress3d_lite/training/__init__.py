"""Training machinery shared by every stage: the accelerate loop with exact resume (``loop.py``)
and the measurement of a training step that ``--dry-run`` reports (``measure.py``).

Knows nothing of any particular model: the stages (``compress3d_lite/stages/``) plug in.
"""
