"""The from-scratch NumPy engine: layers, loss, initializers, optimizers and schedules.

Every forward and backward is written by hand; nothing here imports torch.
"""
