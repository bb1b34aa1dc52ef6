"""Training: loss, the adversarial loop, strategies, checkpoints, telemetry."""
