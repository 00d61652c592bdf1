"""Compiler options for the library's own jitted functions."""

# XLA's default LLVM optimisation level (3) spends most of a cold start of the closed-loop
# generation compiling its PRNG and transcendental functions; at level 2 it compiles 2-3x
# faster on CPU and runs as fast (12-14 s -> 5-6 s to compile, 0.8-1.0 s to run either way,
# on a shared 2-core machine). Not used for the fits: their scans ran slower at level 2.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 2}
