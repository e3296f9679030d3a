"""Triton kernels only (`@triton.jit` code and their launch helpers): no nn.Module, no autograd, no sampling policy.

Modules here import triton at import time; import them only where a kernel is launched.
"""
