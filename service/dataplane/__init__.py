"""The transport-agnostic data plane: admission (readiness, drain, budgets), auth, request
ids, deadlines, limits, decoding into the model's input spec, scoring through the engine,
verdict metrics and the model's metadata. Every transport (``service.transport``) only
translates its messages to and from it."""
