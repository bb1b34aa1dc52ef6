"""Serving: SavedModel export, a TF-Serving-compatible server, and its client."""
