"""The visualisation: plots, the figures of a run, the explorer page, and their training callbacks."""
