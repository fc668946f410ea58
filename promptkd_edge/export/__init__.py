"""Export: fold the student into a plain graph, ONNX, parity gate, quantization, TensorRT, the bundle."""
