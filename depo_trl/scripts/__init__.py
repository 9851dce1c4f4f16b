"""The command-line programs: `depo.py` (training, the `depo-train` console script) and `vllm_server.py` (the vLLM
generation server for a recipe)."""
