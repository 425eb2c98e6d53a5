"""gRPC server reflection over every service the server serves, OIP included.

grpc_reflection answers from one descriptor pool, protobuf's default one unless told
otherwise. The Open Inference Protocol's files live in a pool of their own
(``protos/oip_stubs.py``: so that a process can hold our server and tritonclient), so the
default pool cannot describe ``inference.GRPCInferenceService``. The reflection servicer
gets a pool of its own instead, holding each served service's file (with the files it
imports, before it): grpcurl and other reflection clients can then list, describe and
call every service, ``ModelInfer`` included, without the .proto files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection, reflection_pb2

REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]


def served_pool(files: Iterable[FileDescriptor]) -> DescriptorPool:
    """A new pool holding ``files`` and, before each, every file it imports (each once):
    a pool takes a file only after its dependencies."""
    pool = DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        pool.AddSerializedFile(file.serialized_pb)
        added.add(file.name)

    for file in files:
        add(file)
    return pool


def enable_reflection(server: grpc.aio.Server, services: Sequence[ServiceDescriptor]) -> None:
    """Serve reflection on ``server`` for ``services`` and reflection itself, from a pool
    of their files (whichever pool each was generated into)."""
    served = [*services, REFLECTION]
    pool = served_pool(s.file for s in served)
    reflection.enable_server_reflection([s.full_name for s in served], server, pool=pool)
