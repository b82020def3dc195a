"""The torch-only core: networks, likelihoods, the objective, the model's settings.

Nothing here imports Lightning, Hydra or matplotlib.
"""
