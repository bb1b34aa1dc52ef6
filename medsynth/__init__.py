"""medsynth: a GAN that synthesises X-ray angiography frames, from data to TF Serving."""

__version__ = "0.1.0"
