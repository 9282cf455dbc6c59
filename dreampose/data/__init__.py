"""Data acquisition and preparation: sources, frames, DensePose, manifests, datasets."""
