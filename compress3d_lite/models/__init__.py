"""Models: one concept per file, each with its config dataclass beside it. Pure PyTorch (plus
open_clip, and ``diffusion.py`` for the two diffusion losses); they know nothing of data files,
checkpoints or training.

    pointnet.py        local-pool PointNet with positional encoding (coloured points -> features)
    triplane.py        point features -> r^3 feature volume -> three planes; sampling planes at points
    blocks.py          ResBlocks, down- and upsampling, timestep embedding, gradient checkpointing
    attention3d.py     3D-aware cross-attention (latent cells query their own cube of the volume)
    field_renderer.py  the paper's rgb / mask / depth render losses, rendered from the fields
    autoencoder.py     the triplane VAE that wires them together (AEConfig)
    image_tower.py     open_clip image encoder -> unit image embedding, pretrained or toy (IMAGE_TOWERS)
    shape_tower.py     coloured points -> unit shape embedding in the image tower's space
    contrastive.py     InfoNCE with a learnable temperature; the two stage-2 training modules
    prior.py           the diffusion prior: image embedding -> shape embedding (x0-predicting MLP)
    triplane_unet.py   the triplane UNet with 3D-aware convolution and dual guidance (stage 4)
"""

from .autoencoder import TriplaneVAE  # noqa: F401
