"""Generated protobuf / gRPC modules for ``protos/`` (regenerate with ``make protos``).

protoc is run with ``-Iservice/_proto=protos``: the proto keeps its package path
``gradsentry/v1/...`` and its generated imports read ``from service._proto.gradsentry.v1
import ...``, so the modules import as ordinary subpackages without touching sys.path.
"""
