"""Helpers of the training script: the loss curve and the model card."""
