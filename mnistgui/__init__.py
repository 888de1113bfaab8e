"""mnistgui: a desktop deep-learning workbench for MNIST, built on PyTensor."""

__version__ = "0.1.0"
