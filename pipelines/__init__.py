"""The `medsynth-train` pipeline and the helpers that compile, run and submit it."""
