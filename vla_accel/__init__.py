"""vla-accel: run Vision-Language-Action robot policies fast without losing what they can do."""

__version__ = "0.1.0"
