"""The bundled demo: a small MNIST CNN and a detector fitted on it."""
