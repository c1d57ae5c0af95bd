"""Serving: a KServe v2 / Triton-compatible HTTP server with dynamic batching, and the
export of a Triton Inference Server model repository.

Python API::

    from trtq.deploy.serving import ServeOptions, serve
    serve("model.int8.onnx", port=8000, options=ServeOptions(max_batch=16))

The server needs the ``serve`` extra (Starlette, Uvicorn, prometheus-client).
"""

from trtq.deploy.serving.batcher import BatchStats, DynamicBatcher, Overloaded
from trtq.deploy.serving.protocol import InvalidRequest, ModelSignature, TensorSpec, signature_of
from trtq.deploy.serving.server import ServedModel, ServeOptions, create_app, serve
from trtq.deploy.serving.triton import export_triton, model_config, model_config_text

__all__ = ["BatchStats", "DynamicBatcher", "InvalidRequest", "ModelSignature", "Overloaded", "ServeOptions",
           "ServedModel", "TensorSpec", "create_app", "export_triton", "model_config", "model_config_text", "serve", "signature_of"]
