"""sschsr-deploy: production deployment of SSC-HSR (unaligned-RGB-guided hyperspectral super-resolution)."""

__version__ = "0.1.0"
