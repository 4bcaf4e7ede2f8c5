"""ecomtl: one pretrained encoder, many e-commerce tasks, trained on Ray."""

__version__ = "0.1.0"
