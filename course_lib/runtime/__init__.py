"""From a pruned model to a shipped one, and where speed comes from: speed (ideal vs measured
speedups of pruned models), sparse (kernels that skip zeros: CSR/BSR on the CPU, 2:4 on the
GPU), quantize (int8 in PyTorch), export (ONNX and ONNX Runtime), store (files on disk), serve
(generation), pipeline (every stage measured against the dense model) and optional (a missing
extra is a clear error).
"""
