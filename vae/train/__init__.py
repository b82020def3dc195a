"""The training application: the Lightning module, data, the run, config checks, checkpoints."""
