"""Generated code for the gradsentry proto package (see service._proto)."""
