"""Shared fixtures. Data fixtures live in tests/fixtures_data.py, model fixtures in
tests/fixtures_model.py; both are built by the tests themselves (nothing downloaded)."""

import os

# Keep test runs offline and deterministic on a 2-core machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# --dtype auto is bfloat16 on CPUs with native bf16 (AMX); the references in the tests are float32.
os.environ["WOUNDSCORE_CPU_BF16"] = "0"

pytest_plugins = ["tests.fixtures_data", "tests.fixtures_model"]
