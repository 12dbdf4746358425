"""Long-tail regression baselines as pure tensor functions (no Lightning, no globals, no host
sync): re-weighting and LDS, FDS, Balanced MSE, RankSim, ConR, C-Mixup, Focal-R. The parts in
:mod:`elta_lightning.parts` wire them into a training step."""
