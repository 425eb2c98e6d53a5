"""gradsentry.v1.Reliability: CheckRequest/CheckResponse <-> the data plane."""
