"""kmnrt: KMN video object segmentation, from the PyTorch model to device-resident engines.

Subpackages (each lives in a top-level folder of the repository):

- ``kmnrt.model``      the PyTorch KMN network, checkpoints and the reference tracker (the oracle)
- ``kmnrt.training``   Hide-and-Seek pre-training and main training
- ``kmnrt.export``     ONNX graphs, TensorRT engines and verified bundles
- ``kmnrt.runtime``    backends, the device-resident memory bank and the session API
- ``kmnrt.data``       frames, videos, DAVIS trees and palette PNGs
- ``kmnrt.evaluation`` DAVIS J, F and J&F
- ``kmnrt.benchmarks`` latency and throughput benchmarks

Nothing is configured at import time and no heavy library is imported here.
"""

from kmnrt.errors import KmnrtError, UserInputError

__version__ = "0.1.0"
__all__ = ["KmnrtError", "UserInputError", "__version__"]
