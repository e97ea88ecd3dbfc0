"""A STAND-IN for an SGLang server (SGLang cannot be installed on this CPU machine): a small local HTTP server
that implements exactly the request/response shapes of SGLang's documented native API that the adapter uses
(sglang `srt/entrypoints/http_server.py` and `srt/managers/io_struct.py`):

- GET  /health -> 200
- POST /generate  GenerateReqInput {"input_ids": [[int]] | [int], "sampling_params": [dict] | dict,
  "return_logprob": bool, "top_logprobs_num": int} -> one dict per input (a list for batched input_ids):
  {"output_ids": [int], "meta_info": {"id", "finish_reason": {"type": "stop", "matched": int} |
  {"type": "length", "length": int}, "prompt_tokens", "completion_tokens",
  "output_token_logprobs": [[logprob, token_id, null], ...],
  "output_top_logprobs": [[[logprob, token_id, null], ...top_logprobs_num...], ...]}}
- POST /update_weights_from_disk {"model_path": str, ...} -> {"success", "message", "num_paused_requests"}
  (HTTP 200, or 400 with success=false)
- GET|POST /flush_cache -> 200 text "Cache flushed...";
- GET|POST /release_memory_occupation, /resume_memory_occupation -> 200 (empty JSON body: null)
- POST /init_weights_update_group {"master_address", "master_port", "rank_offset", "world_size", "group_name",
  "backend"} and /update_weights_from_distributed {"names", "dtypes", "shapes", "group_name", "flush_cache"}
  -> {"success", "message"}: join the trainer's broadcast group as rank `rank_offset`, then receive each
  named tensor by broadcast from rank 0 in order (with backend "gloo" on CPU). Run as its own process
  (`python -m tests.rollout.fake_sglang_server MODEL PORT`) for this: a group needs one process per rank.

Behind it is a real HF transformers model, sampled token by token at temperature T and returning
log_softmax(logits / T) of each sampled token (SGLang's default log-probs: with top_k the token is drawn
from the renormalised top-k set, but the log-probs stay those of the whole tempered distribution). It records every call so
tests can check which endpoints the adapter used, and can be told to fail the next N calls of an endpoint.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch


class FakeSglang:
    def __init__(self, model_path: str, port: int = 0):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        self.lock = threading.Lock()
        self.calls: list[str] = []
        self.fail: dict[str, tuple[int, int]] = {}  # path -> (remaining, status)
        self.memory_released = False
        self.group = None
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail_next(self, path: str, times: int, status: int):
        self.fail[path] = (times, status)

    # --- endpoints -------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, req: dict):
        single = isinstance(req["input_ids"][0], int)
        inputs = [req["input_ids"]] if single else req["input_ids"]
        params = req.get("sampling_params") or {}
        params = params if isinstance(params, list) else [params] * len(inputs)
        if len(params) != len(inputs):
            return 400, {"error": {"message": "sampling_params and input_ids differ in length"}}
        outs = [self._one(ids, p, bool(req.get("return_logprob")), int(req.get("top_logprobs_num") or 0))
                for ids, p in zip(inputs, params)]
        return 200, outs[0] if single else outs

    def _one(self, prompt: list[int], p: dict, return_logprob: bool, top_logprobs_num: int) -> dict:
        temperature, max_new, top_k = p.get("temperature", 1.0), p.get("max_new_tokens", 128), p.get("top_k", -1)
        stop = set(p.get("stop_token_ids") or [])
        if not p.get("ignore_eos", False):
            stop.add(self.model.config.eos_token_id)
        gen = torch.Generator()
        gen.manual_seed(p["sampling_seed"] if "sampling_seed" in p else torch.seed())
        out, entries, tops, finish = [], [], [], {"type": "length", "length": max_new}
        step = self.model(torch.tensor([prompt]), use_cache=True)
        for _ in range(max_new):
            logprobs = torch.log_softmax(step.logits[0, -1].float() / temperature, -1)
            probs = logprobs.exp()
            if top_k > 0:
                probs[probs < probs.topk(top_k).values[-1]] = 0.0
            tok = int(torch.multinomial(probs, 1, generator=gen))
            if top_logprobs_num:
                best = logprobs.topk(top_logprobs_num)
                tops.append([[float(v), int(i), None] for v, i in zip(best.values, best.indices)])
            step = self.model(torch.tensor([[tok]]), past_key_values=step.past_key_values, use_cache=True)
            out.append(tok)
            entries.append([float(logprobs[tok]), tok, None])
            if tok in stop:
                finish = {"type": "stop", "matched": tok}
                break
        meta = {"id": "fake", "finish_reason": finish, "prompt_tokens": len(prompt), "completion_tokens": len(out),
                "cached_tokens": 0}
        if return_logprob:
            meta["output_token_logprobs"] = entries
            if top_logprobs_num:
                meta["output_top_logprobs"] = tops
        return {"output_ids": out, "meta_info": meta}

    @torch.no_grad()
    def update_weights_from_disk(self, req: dict):
        from safetensors.torch import load_file

        folder = Path(req["model_path"])
        shards = sorted(folder.glob("*.safetensors"))
        if not shards:
            return 400, {"success": False, "message": f"no safetensors files in {folder}", "num_paused_requests": 0}
        state = {}
        for f in shards:
            state.update(load_file(str(f)))
        self.model.load_state_dict(state, strict=False)
        return 200, {"success": True, "message": "Succeeded to update model weights.", "num_paused_requests": 0}

    # --- HTTP plumbing ---------------------------------------------------------------------------------
    def _route(self, method: str, path: str, body: dict | None):
        self.calls.append(path)
        remaining, status = self.fail.get(path, (0, 0))
        if remaining:
            self.fail[path] = (remaining - 1, status)
            return status, {"success": False, "message": f"injected failure ({status})"}
        if path == "/health" and method == "GET":
            return 200, None
        if path == "/generate" and method == "POST":
            return self.generate(body)
        if path == "/update_weights_from_disk" and method == "POST":
            return self.update_weights_from_disk(body)
        if path == "/flush_cache":
            return 200, "Cache flushed.\nPlease check backend logs for more details. (When there are running or " \
                        "waiting requests, the operation will not be performed.)\n"
        if path == "/init_weights_update_group" and method == "POST":
            from spro_mcore.rollout.weight_sync_nccl import init_broadcast_group

            self.group = init_broadcast_group(body["master_address"], body["master_port"], body["rank_offset"],
                                              body["world_size"], body["group_name"], body["backend"])
            return 200, {"success": True, "message": "Succeed to initialize custom process group."}
        if path == "/update_weights_from_distributed" and method == "POST":
            from spro_mcore.rollout.weight_sync_nccl import BucketMeta, receive_bucket

            received = receive_bucket(self.group, BucketMeta(body["names"], body["dtypes"], body["shapes"]))
            with torch.no_grad():
                self.model.load_state_dict(dict(received), strict=False)
            return 200, {"success": True, "message": "Succeeded to update parameter online."}
        if path in ("/release_memory_occupation", "/resume_memory_occupation"):
            self.memory_released = path == "/release_memory_occupation"
            return 200, None
        return 404, {"detail": "Not Found"}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with fake.lock:
                    status, payload = fake._route(method, self.path.split("?")[0], body)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def log_message(self, *args):
                pass

        return Handler


if __name__ == "__main__":  # python -m tests.rollout.fake_sglang_server MODEL_PATH PORT
    import sys
    import time

    FakeSglang(sys.argv[1], int(sys.argv[2]))
    while True:
        time.sleep(3600)
