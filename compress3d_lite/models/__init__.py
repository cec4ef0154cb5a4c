"""Models: one concept per file. Pure PyTorch; they know nothing of data files or training.

    pointnet.py      local-pool PointNet with positional encoding (coloured points -> features)
    triplane.py      point features -> r^3 feature volume -> three planes; sampling planes at points
    blocks.py        ResBlocks, down- and upsampling for the plane CNNs
    attention3d.py   3D-aware cross-attention (latent cells query their own cube of the volume)
    autoencoder.py   the triplane VAE that wires them together
    image_tower.py   open_clip image encoder -> unit image embedding (pretrained or toy)
    shape_tower.py   coloured points -> unit shape embedding in the image tower's space
    contrastive.py   InfoNCE with a learnable temperature; the two-tower training module
    prior.py         the diffusion prior: image embedding -> shape embedding (x0-predicting MLP)
"""

from .autoencoder import TriplaneVAE  # noqa: F401
