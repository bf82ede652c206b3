"""Deployable artefacts: ONNX export with parity checks, TensorRT engine build and plugins, engine metadata.

- :mod:`.onnx` — export of the per-tile network / the flow estimator (``export_onnx``), checker + shape inference +
  ONNX Runtime parity after every export, fp16 graphs with fp32 islands, ``sschsr`` custom-domain nodes.
- :mod:`.graph` — plain-``onnx`` rewrites (stock ``DeformConv`` ↔ our plugin node, function bodies, metadata).
- :mod:`.trt_support` — static check of a graph against TensorRT's ONNX operator support matrix (kept as data).
- :mod:`.sidecar` — the engine sidecar JSON and the compatibility check done before loading an engine.
- :mod:`.ops` — one module per custom op (``deform_conv``, ``spectral_attention``, ``patch_match``): its ONNX schema,
  translations and reference body, and its TensorRT plugin (shape / type functions, JIT and AOT implementations).
- :mod:`.plugins` — registers the ops' TensorRT plugins with ``tensorrt.plugin``; AOT PTX, plugin hashes.
- :mod:`.tensorrt` — engine build (profiles, timing cache, strongly typed), loading with checks, runner.

Submodules are imported on use: nothing here needs onnx, onnxruntime or TensorRT at import time.
"""
