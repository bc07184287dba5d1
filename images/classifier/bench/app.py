"""The same EfficientNet-Lite0 ONNX model served by onnxruntime + FastAPI, the usual
Python way, as a point of comparison for bench.sh. Same preprocessing and answer shape
as the Rust service (POST /predict with a multipart `file` or a raw image/* body).

Run: MODEL_DIR=dist/model uvicorn app:app --host 127.0.0.1 --port 8001 --workers 2
Each worker process has its own session with ORT_THREADS intra-op threads (default 1).
"""

import asyncio.base_events
import io
import os
import socket
import time

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

# uvicorn --workers N hands each worker a listening socket made with protocol number 0,
# and asyncio then skips TCP_NODELAY on the accepted connections (it checks for
# IPPROTO_TCP): on a keep-alive connection the response body waits ~40 ms behind the
# headers for the client's delayed ACK. Set it as a single uvicorn process does, so the
# comparison measures the server, not that interaction.
def _set_nodelay(sock):
    if sock.family in {socket.AF_INET, socket.AF_INET6} and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


asyncio.base_events._set_nodelay = _set_nodelay

MODEL_DIR = os.environ.get("MODEL_DIR", "/app/model")
OPTIONS = ort.SessionOptions()
OPTIONS.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "1"))
OPTIONS.inter_op_num_threads = 1
SESSION = ort.InferenceSession(
    os.path.join(MODEL_DIR, "efficientnet-lite0.onnx"),
    sess_options=OPTIONS,
    providers=["CPUExecutionProvider"],
)
with open(os.path.join(MODEL_DIR, "labels.txt"), encoding="utf-8") as f:
    LABELS = f.read().splitlines()

app = FastAPI()


def preprocess(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    scale = 256 / min(w, h)
    img = img.resize((max(224, round(w * scale)), max(224, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    x = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
    return x.transpose(2, 0, 1)[None]


@app.get("/health")
def health():
    return {"status": "ok"}


@app.post("/predict")
async def predict(request: Request, top_k: int = 5):
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None:
            raise HTTPException(400, "multipart form has no `file` field")
        data = await upload.read()
    elif ctype.startswith("image/"):
        data = await request.body()
    else:
        raise HTTPException(415, "send multipart/form-data or an image/* body")
    if not data:
        raise HTTPException(400, "the uploaded image is empty")
    # Inference in the threadpool so the event loop keeps accepting requests.
    return await run_in_threadpool(classify, data, top_k)


def classify(data: bytes, top_k: int):
    try:
        x = preprocess(data)
    except Exception as e:  # PIL raises many types for bad input
        raise HTTPException(422, f"the image could not be decoded: {e}")
    start = time.perf_counter()
    logits = SESSION.run(None, {"input": x})[0][0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    ms = (time.perf_counter() - start) * 1000
    idx = np.argsort(-probs)[:top_k]
    return {
        "predictions": [
            {"index": int(i), "label": LABELS[i], "score": float(probs[i])} for i in idx
        ],
        "inference_ms": ms,
    }
