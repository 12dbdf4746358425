"""Backbones, heads and the Lightning modules."""
