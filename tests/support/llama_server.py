"""Serve a GGUF model over llama.cpp's OpenAI-compatible HTTP server (PyPI wheel `xllamacpp`).

xllamacpp has no command line of its own, so this launcher builds its `CommonParams` and keeps
the server alive until SIGTERM/SIGINT. Usage:

    python llama_server.py MODEL.gguf PORT [N_PARALLEL] [N_CTX]
"""
import signal
import sys
import threading

import xllamacpp


def main() -> None:
    model, port = sys.argv[1], int(sys.argv[2])
    n_parallel = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    n_ctx = int(sys.argv[4]) if len(sys.argv) > 4 else 2048 * n_parallel

    params = xllamacpp.CommonParams()
    params.model.path = model
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_parallel = n_parallel
    params.n_ctx = n_ctx
    params.cont_batching = True
    # Two threads on two shared cores run 3-4x slower than one: keep it at one.
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.endpoint_metrics = True

    server = xllamacpp.Server(params)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"llama server on 127.0.0.1:{port} ({server.listening_address})", flush=True)
    stop.wait()
    del server


if __name__ == "__main__":
    main()
