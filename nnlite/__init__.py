"""nnlite: a readable, self-configuring U-Net for 3D medical image segmentation (after nnU-Net)."""

__version__ = "0.1.0"
