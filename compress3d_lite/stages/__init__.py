"""Training, one home per stage: how the stage's model and training module are built, its training
step and run (on the one loop of ``compress3d_lite/training``), and its dry-run setup. Presets are
``compress3d_lite/presets.py``; loading and running a trained stage is ``compress3d_lite/inference``
(which imports nothing from here, so inference never pulls in training code).

    vae.py      stage 1, the triplane VAE                         train ae
    embed.py    stage 2, the image and shape towers               train embed
    prior.py    stage 3, the diffusion prior                      train prior
    unet.py     stage 4, the triplane latent diffusion            train diffusion
    start.py    the UNet's start estimate (our addition)          train start

The models themselves are in ``compress3d_lite/models``.
"""
