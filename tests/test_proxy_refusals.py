"""What the router raises to end a gRPC call reaches Ray Serve's proxy pickled, and the proxy unpickles it to read the
status. It must be of a class the proxy has already: with ContextLengthExceeded (overfill.serving.types) the proxy
imported that module, and torch with it, at the service's first refused request (1.1 s for that one refusal, then
0.01 s each; ~200 MB more in the proxy)."""

import pickle
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from overfill.serving.types import ContextLengthExceeded, ServiceError
from overfill.status import StatusCode
from services.router.server import GenerationRouter
from tests.test_security import _Context

REPO = Path(__file__).resolve().parents[1]

# What the proxy process holds when it unpickles a refusal: Ray Serve, and the servicer functions of gRPCOptions.
PROXY_UNPICKLES = """
import pickle, sys
import services.router.grpc_handlers
error = pickle.loads(sys.stdin.buffer.read())
heavy = sorted(name for name in ("torch", "overfill.serving.types", "transformers") if name in sys.modules)
print(type(error).__name__, error)
print("heavy:", ",".join(heavy))
"""


@pytest.mark.parametrize("error", [ContextLengthExceeded("prompt (660000 characters) cannot fit"),
                                   ServiceError(StatusCode.UNAUTHENTICATED, "missing API key")],
                         ids=["context length", "unauthenticated"])
def test_a_refusal_unpickles_in_the_proxy_without_importing_our_modules_or_torch(error):
    context = _Context()
    with pytest.raises(Exception) as raised:
        GenerationRouter._abort(error, context)
    assert (context.code, context.details) == (error.code.to_grpc(), error.message)  # the status the client gets
    assert isinstance(context.code, grpc.StatusCode)
    result = subprocess.run([sys.executable, "-c", PROXY_UNPICKLES], input=pickle.dumps(raised.value), cwd=REPO,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    unpickled, heavy = result.stdout.decode().splitlines()
    assert error.message in unpickled and heavy == "heavy: "  # unpickled, and nothing heavy imported for it
