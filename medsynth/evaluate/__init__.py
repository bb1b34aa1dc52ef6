"""Evaluation: image-quality metrics, reports and pictures, backbone comparison."""
