"""Adaptive attacks: white-box PGD against the classifier *and* a detector that knows it.

- ``onnx_torch``: a torch copy of an exported head from the ONNX file's own weights;
- ``features`` / ``detector``: gradsentry's feature vector and H, differentiable in x;
- ``targets``: the detectors under attack (gradsentry, Mahalanobis, KNN), a registry;
- ``pgd``: the oblivious and the adaptive L∞ PGD;
- ``demos``: the demos the report runs on, a registry; ``report``: the run and its JSON.

Lab code (``gradsentry attack``): never imported by the serving path.
"""
