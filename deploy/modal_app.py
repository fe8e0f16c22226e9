"""The scoring service on Modal (serverless GPU, a T4 as in the plan): the same ``create_app``.

NOT TESTED AGAINST MODAL: nothing in this repository's CI or sessions can reach Modal, so this file
is only checked to import with the ``modal`` package installed (tests/test_serve.py). Deploy:

    modal secret create woundscore-api WOUNDSCORE_API_TOKEN=<a long random token>
    modal volume create woundscore-models
    modal volume put woundscore-models models/mlp /mlp             # the model folder
    modal volume put woundscore-models medsiglip-448 /medsiglip-448  # the encoder checkpoint
    modal deploy deploy/modal_app.py

The model folder and the encoder checkpoint come from a Modal Volume (MedSigLIP is gated: download
it once where you have accepted its terms). ``WOUNDSCORE_MODEL_DIR`` / ``WOUNDSCORE_ENCODER``
override the paths. One container serves many requests (micro-batching gathers them); Modal starts
more containers under load and stops idle ones after ``scaledown_window`` seconds.
"""

from __future__ import annotations

import os

import modal

MODEL_DIR = os.environ.get("WOUNDSCORE_MODEL_DIR", "/models/mlp")
ENCODER = os.environ.get("WOUNDSCORE_ENCODER", "/models/medsiglip-448")

image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install("torch", "transformers", "keras", "scikit-learn", "h5py", "pillow", "fastapi", "uvicorn",
                 "python-multipart", "safetensors")
    .add_local_python_source("woundscore")
)
app = modal.App("woundscore", image=image)
models = modal.Volume.from_name("woundscore-models", create_if_missing=True)


@app.function(gpu="T4", volumes={"/models": models}, secrets=[modal.Secret.from_name("woundscore-api")],
              scaledown_window=300, timeout=600)
@modal.concurrent(max_inputs=32)  # requests share a container so they can share a batch
@modal.asgi_app()
def web():
    """The same ASGI app as `wound-serve` (fp16/bf16 chosen by --dtype auto on the T4)."""
    from woundscore.classify.serve import create_app

    return create_app(MODEL_DIR, encoder=ENCODER, device="cuda", max_batch=16, max_wait_ms=10,
                      token=os.environ.get("WOUNDSCORE_API_TOKEN") or None)
