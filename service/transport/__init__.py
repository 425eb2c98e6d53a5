"""Transports: each translates its own messages to and from ``service.dataplane``.

``grpc_v1`` (gradsentry.v1.Reliability) and ``oip_grpc`` (the Open Inference Protocol's
``inference.GRPCInferenceService``) share one gRPC server and port; ``oip_rest`` serves the
Open Inference Protocol over HTTP; ``reflection`` describes every gRPC service, OIP
included. ``grpc_defaults`` must not import grpc (see its doc)."""
