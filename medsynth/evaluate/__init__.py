"""Evaluation: image-quality metrics, reports, backbone comparison (pictures: `medsynth.pictures`)."""
