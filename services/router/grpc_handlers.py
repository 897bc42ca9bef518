"""How Ray Serve's gRPC proxy registers `overfill.v1.Generation` (the function named in gRPCOptions).

The same methods as the generated `add_GenerationServicer_to_server`, but each request is parsed with
`lenient_parser`: bytes protobuf refuses (invalid UTF-8 in a stop string, a truncated frame) reach the router as an
`UnparsableRequest`, which it answers with INVALID_ARGUMENT naming the field, where the generated deserializer made
the proxy answer UNKNOWN. Requests over MAX_REQUEST_BYTES are refused the same way before they are parsed (Ray
Serve's proxy accepts messages up to 2 GiB unless RAY_SERVE_GRPC_MAX_MESSAGE_SIZE says less; start_service sets it).
"""

from __future__ import annotations

import grpc

from overfill.request_parsing import lenient_parser
from overfill.v1 import generation_pb2 as pb

SERVICE_NAME = "overfill.v1.Generation"
MAX_REQUEST_BYTES = 8 << 20  # a whole request: room for the longest prompt (validation.MAX_PROMPT_CHARS) in 4-byte chars


def add_generation_servicer(servicer, server) -> None:
    handlers = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate, request_deserializer=lenient_parser(pb.GenerateRequest, MAX_REQUEST_BYTES),
            response_serializer=pb.GenerateResponse.SerializeToString),
        "GenerateUnary": grpc.unary_unary_rpc_method_handler(
            servicer.GenerateUnary, request_deserializer=lenient_parser(pb.GenerateRequest, MAX_REQUEST_BYTES),
            response_serializer=pb.GenerateUnaryResponse.SerializeToString),
        "Health": grpc.unary_unary_rpc_method_handler(
            servicer.Health, request_deserializer=lenient_parser(pb.HealthRequest, MAX_REQUEST_BYTES),
            response_serializer=pb.HealthResponse.SerializeToString),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetModelInfo, request_deserializer=lenient_parser(pb.ModelInfoRequest, MAX_REQUEST_BYTES),
            response_serializer=pb.ModelInfoResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
