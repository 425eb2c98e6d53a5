"""The Open Inference Protocol over HTTP/REST (/v2/...) <-> the data plane."""
