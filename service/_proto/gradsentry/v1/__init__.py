"""Generated code for gradsentry.v1 (see service._proto)."""
