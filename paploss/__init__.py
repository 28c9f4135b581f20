"""paploss: AP-aligned ranking losses and loss search for Detectron2."""

__version__ = "0.1.0"
