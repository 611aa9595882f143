"""Benchmarks of fastcl's fused operators, runnable from an installed package.

``fastcl bench ops [--quick]`` runs :mod:`fastcl.benchmarks.ops`; the pytest-benchmark suites
in the repository's ``bench/`` reuse the cases defined there.
"""
