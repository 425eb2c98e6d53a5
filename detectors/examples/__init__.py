"""Example models served end to end (besides the MNIST demo in ``detectors.demo``)."""
