"""The pure-PyTorch path: the CPU backend and the tests' second oracle (after torch itself).

It mirrors ``kernels/`` (installed as ``sparsemb.kernels``) file for file, so an op's two
implementations have the same module name: ``gather``, ``renorm``, ``grad``, ``optim``.
"""
