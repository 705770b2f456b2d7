"""Where speed comes from: speed (ideal vs measured speedups of pruned models) and sparse
(kernels that skip zeros: CSR/BSR on the CPU, 2:4 on the GPU).
"""
