"""Demonstrations: the HDF5 demo layout (robomimic/LIBERO) and scripted-expert collection."""
