"""The test-only CUDA emulation: kernels/*.cu executed on the CPU (harness.py builds and runs it)."""
