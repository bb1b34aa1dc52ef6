"""The key-point tracker: a small heat-map network that finds the catheter tip and vessel bifurcations.

It judges synthetic frames by what they are for: a tracker trained on real frames plus labelled
synthetic ones should find key points on held-out real frames better than one trained on the real
frames alone. Modules: `model` (the U-Net), `loss` (heat-map targets and the focal loss), `decode`
(heat maps → key points), `metrics` (tip error, PCK, bifurcation P/R/F1), `train`, `evaluate`, and
`figures` (predictions drawn over frames).
"""
