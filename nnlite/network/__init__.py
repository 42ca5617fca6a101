"""The U-Net: `build_unet(plan, in_channels, num_classes)`; `geometry` gives its sizes by arithmetic."""

from nnlite.network.unet import UNet, build_unet, channels_last_input, compile_network, to_channels_last

__all__ = ["UNet", "build_unet", "channels_last_input", "compile_network", "to_channels_last"]
