"""One home per stage: its presets (named dataclasses), how it is built, its training step and run,
how it is saved and loaded, and its dry-run setup. The CLI, the dry run, the pipeline and the
evaluators all build a stage through its module, so nothing is constructed in two places.

    vae.py              stage 1, the triplane VAE (and ``reconstruct``)            train ae
    embed.py            stage 2, the image and shape towers (and the embed_* helpers)  train embed
    prior.py            stage 3, the diffusion prior                               train prior
    unet.py             stage 4, the triplane latent diffusion                     train diffusion
    quality_filter.py   the data-curation MLP over shape embeddings                data quality-filter
    dryrun.py           ``--dry-run``: what a stage costs at a preset

The models themselves are in ``compress3d_lite/models`` and the one training loop in
``compress3d_lite/training``.
"""
