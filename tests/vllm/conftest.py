"""vLLM backend tests run only in the vLLM venv (`make test-vllm`); elsewhere nothing here is collected.

This folder is itself importable as a namespace package named `vllm` (tests/ is on sys.path), so the check
asks for the real package's `__init__.py`.
"""

import importlib.util

_spec = importlib.util.find_spec("vllm")
collect_ignore_glob = [] if _spec is not None and _spec.origin not in (None, "namespace") else ["test_*.py"]
