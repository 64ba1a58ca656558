"""The synthesis engine: images, VGG features, losses, optimisers and the optimisation loop.

Free of Hydra and W&B: import it, build an objective, run a synthesis.
"""
