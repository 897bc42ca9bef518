"""How Ray Serve's gRPC proxy registers `overfill.v1.Generation` (the function named in gRPCOptions).

The same methods as the generated `add_GenerationServicer_to_server`, but each request is parsed with
`lenient_parser`: bytes protobuf refuses (invalid UTF-8 in a stop string, a truncated frame) reach the router as an
`UnparsableRequest`, which it answers with INVALID_ARGUMENT naming the field, where the generated deserializer made
the proxy answer UNKNOWN.

MAX_REQUEST_BYTES bounds what any request can cost before its API key is checked: Ray Serve's proxy parses a request
before the router sees it, and four keyless clients sending 8 MiB frames protobuf refuses kept 2 cores busy enough to
stall other streams for a second. The proxy refuses a larger message in gRPC's core (RESOURCE_EXHAUSTED, naming both
sizes) before any Python touches it: RAY_SERVE_GRPC_MAX_MESSAGE_SIZE, which start_service and the deploy files set
(it reads up to 2 GiB otherwise). The deserializer refuses one too, unparsed, wherever it is registered without that
limit.
"""

from __future__ import annotations

import grpc

from overfill.request_parsing import lenient_parser
from overfill.serving.config import MAX_PROMPT_CHARS
from overfill.v1 import generation_pb2 as pb

SERVICE_NAME = "overfill.v1.Generation"
# A whole request: the longest prompt the config allows in 4-byte characters, and 64 KiB for every other field (the
# chat's roles and framing, stop strings, token ids).
MAX_REQUEST_BYTES = 4 * MAX_PROMPT_CHARS + (64 << 10)


HEALTH_SERVICE_NAMES = ("", SERVICE_NAME)  # what grpc.health.v1 answers for: the server as a whole, and the API


def unknown_health_service(service: str) -> str:
    return (f"unknown service {service[:64]!r}: health is reported for "
            f"{' and '.join(repr(n) for n in HEALTH_SERVICE_NAMES)}")


class StatusAbort(Exception):
    """What the router raises to end a gRPC call with the status it set on the call's context (its `_abort`).

    NOTE: Ray Serve pickles what a replica raises back to the proxy, which unpickles it to read the status. An
    exception of any class of ours made the proxy import that class's module at its first refusal:
    overfill.serving.types, and torch with it (measured: the service's first refused request took 1.1 s, then
    0.01 s; the proxy grew by ~200 MB). This class lives in a module the proxy imported at start (the servicer
    functions of gRPCOptions) and carries only the status's details."""


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
