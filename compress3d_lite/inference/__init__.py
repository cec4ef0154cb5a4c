"""Loading a trained stage and running it: what the pipeline, ``reconstruct`` and the evaluators
need, and no training code (``import compress3d_lite.pipeline`` pulls in nothing of
``compress3d_lite.training`` or ``compress3d_lite.stages``; tests/test_layout.py checks it).

    vae.py     load_vae, latent_stats, encode_latents, reconstruct_points (and load_points, the mesh or .npz read)
    embed.py   load_towers (image + shape tower, checked to belong together), embed_images / rgba / points / mesh / folder
    prior.py   load_prior
    unet.py    load_unet (with its sampling record checked), load_start, and the checks of guidance and start

Training a stage is ``compress3d_lite/stages``; the sizes a loaded config.json may ask for come
from ``compress3d_lite/presets.py``.
"""
