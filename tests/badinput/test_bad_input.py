"""The bad-input table: what a real user can get wrong (config, data, reward plugins, model and checkpoint
folders, output folders, engines, concurrent runs), each run through the real `spro-mcore` entry point and
held to the four properties in `harness.check` (non-zero exit, one line naming the culprit, no traceback,
earlier files byte-identical). Every case starts from an output folder holding an earlier run's files.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.badinput.harness import Case, check, run_in_process, run_subprocess, snapshot

pytestmark = pytest.mark.unit
TINY = Path(__file__).resolve().parents[2] / "spro_mcore" / "assets" / "tiny_base"
QUICK = ["trainer.total_steps=1", "data.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=8",
         "data.synthetic_train_size=16", "data.synthetic_eval_size=2", "trainer.eval_interval=0",
         "logging.progress_bar=false", "logging.tensorboard=false"]


# ---- builders ---------------------------------------------------------------------------------------------
def earlier_run(tmp: Path) -> Path:
    """An output folder as a finished earlier run leaves it."""
    out = tmp / "run"
    (out / "hf_final").mkdir(parents=True)
    (out / "config.yaml").write_text("trainer:\n  total_steps: 2\n")
    (out / "metrics.jsonl").write_text('{"step": 0, "eval/acc": 0.5}\n{"step": 1, "reward/mean": 0.25}\n'
                                       '{"step": 2, "reward/mean": 0.5}\n')
    (out / "hf_final" / "model.safetensors").write_bytes(b"earlier weights")
    return out


def train(*overrides: str, config: Path | None = None):
    def setup(tmp: Path, stack) -> list[str]:
        out = earlier_run(tmp)
        args = [o.replace("{tmp}", str(tmp)) for o in overrides]
        if not any(a.startswith("trainer.output_dir=") for a in args):
            args.append(f"trainer.output_dir={out}")
        head = ["train"] + (["--config", str(tmp / config)] if config else [])
        return head + args
    return setup


def with_files(files: dict, then):
    """Write `files` ({relative path: str | bytes | callable(path)}) under the case folder, then `then`."""
    def setup(tmp: Path, stack) -> list[str]:
        for rel, content in files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if callable(content):
                content(p)
            elif isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content)
        return then(tmp, stack)
    return setup


def model_copy(drop=(), config=None) -> callable:
    """A copy of the shipped tiny model without the files in `drop` (and with another config.json)."""
    def make(p: Path) -> None:
        shutil.copytree(TINY, p)
        for name in drop:
            (p / name).unlink()
        if config is not None:
            (p / "config.json").write_text(config(json.loads((TINY / "config.json").read_text())) if callable(config)
                                           else config)
    return make


def pav_verifier(p: Path, **kw) -> None:
    from tests.pav.random_verifier import make_random_verifier

    make_random_verifier(p, **kw)


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


GOOD_ROW = {"prompt": "Q: 1+1=", "answer": "2"}


def data_case(content, name="train.jsonl", key="train_path"):
    other = {"train_path": "good.jsonl"} if key == "eval_path" else {}
    files = {name: content, "good.jsonl": jsonl(GOOD_ROW, GOOD_ROW)}
    args = ["data.source=file", f"data.{key}={{tmp}}/{name}"] + [f"data.{k}={{tmp}}/{v}" for k, v in other.items()]
    return with_files(files, train(*args))


def plugin(source: str, fn="reward"):
    def setup(tmp: Path, stack) -> list[str]:
        mod = f"badplugin_{abs(hash((source, fn))) % 10**8}"
        (tmp / f"{mod}.py").write_text(source)
        sys.path.insert(0, str(tmp))
        stack.callback(sys.path.remove, str(tmp))
        stack.callback(sys.modules.pop, mod, None)
        return train(f"data.reward_fn={mod}:{fn}")(tmp, stack)
    return setup


def hold_lock(tmp: Path, stack) -> list[str]:
    argv = train()(tmp, stack)
    fd = os.open(tmp / "run" / ".spro-run.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"pid 4242 on testhost\n")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another trainer holds it (flock is per open file)
    stack.callback(os.close, fd)
    return argv


def tmpfs(tmp: Path, stack, size: str, ro: bool = False) -> Path:
    mnt = tmp / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if ro else ""), "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    stack.callback(subprocess.run, ["umount", "-l", str(mnt)], capture_output=True)
    return mnt


def full_disk(tmp: Path, stack) -> list[str]:
    mnt = tmpfs(tmp, stack, "64k")
    (mnt / "out").mkdir()
    with open(mnt / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    return train(f"trainer.output_dir={mnt}/out")(tmp, stack)


def read_only(tmp: Path, stack) -> list[str]:
    mnt = tmpfs(tmp, stack, "64k", ro=True)
    return train(f"trainer.output_dir={mnt}/out")(tmp, stack)


def no_permission(tmp: Path, stack) -> list[str]:
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere (the read-only case covers this as root)")
    (tmp / "locked").mkdir()
    os.chmod(tmp / "locked", 0o555)
    stack.callback(os.chmod, tmp / "locked", 0o755)
    return train(f"trainer.output_dir={tmp}/locked/out")(tmp, stack)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with-block ends: nothing listens there


class _FailingVllm(http.server.BaseHTTPRequestHandler):
    """Answers like a healthy vLLM server until asked to generate; then fails (HTTP 500)."""

    def do_GET(self):
        body = b'{"data": [{"id": "tiny"}]}' if self.path == "/v1/models" else b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = b"engine crashed: out of KV cache"
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def failing_server(tmp: Path, stack) -> list[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FailingVllm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stack.callback(server.server_close)
    stack.callback(server.shutdown)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    (tmp / "url").write_text(url)
    return train(*QUICK, "rollout.engine=vllm", "rollout.mode=server", f"rollout.server_urls=[{url}]",
                 "rollout.max_retries=1", "checkpoint.interval=1")(tmp, stack)


def export_args(*args: str):
    def setup(tmp: Path, stack) -> list[str]:
        earlier_run(tmp)
        return ["export", *[a.replace("{tmp}", str(tmp)) for a in args]]
    return setup


def export_args_convert(*args: str):
    def setup(tmp: Path, stack) -> list[str]:
        earlier_run(tmp)
        return ["convert", *[a.replace("{tmp}", str(tmp)) for a in args]]
    return setup


def mcore_meta(p: Path) -> None:
    """The metadata file of a Megatron checkpoint of the tiny model (enough to get past its checks)."""
    p.write_text(json.dumps({"format": "spro-mcore/megatron-dist-checkpoint", "dtype": "float32",
                             "hf_config": json.loads((TINY / "config.json").read_text())}))


YAML = "r.yaml"
BAD_CFG_JSON = '{"architectures": ["Qwen2ForCausalLM"],\n "hidden_size": 64,\n "vocab_size": \n}'

# ---- the table --------------------------------------------------------------------------------------------
CASES = [
    # config files
    Case("yaml-top-level-list", with_files({YAML: "- model\n- trainer\n"}, train(config=YAML)),
         r"{tmp}/r\.yaml: the top level must be a mapping"),
    Case("yaml-syntax-error", with_files({YAML: "trainer:\n  total_steps: 3\n bad: [\n"}, train(config=YAML)),
         r"{tmp}/r\.yaml:3: not valid YAML"),
    Case("yaml-not-utf8", with_files({YAML: b"trainer:\n  output_dir: \xff\xfe\n"}, train(config=YAML)),
         r"{tmp}/r\.yaml is not UTF-8"),
    Case("yaml-missing", train(config=YAML), r"config file not found: {tmp}/r\.yaml"),
    Case("yaml-unknown-key", with_files({YAML: "algo:\n  betta: 0.1\n"}, train(config=YAML)),
         r"unknown config key 'algo\.betta'; did you mean 'algo\.beta'"),
    Case("yaml-section-is-scalar", with_files({YAML: "trainer: 5\n"}, train(config=YAML)), r"'trainer' is a section"),
    Case("yaml-wrong-type", with_files({YAML: "trainer:\n  total_steps: lots\n"}, train(config=YAML)),
         r"'trainer\.total_steps' \({tmp}/r\.yaml\): expected int"),
    Case("yaml-unknown-section", with_files({YAML: "trainr:\n  seed: 1\n"}, train(config=YAML)),
         r"unknown config section 'trainr'"),
    # overrides
    Case("override-unknown-key", train("trainer.totl_steps=3"), r"'trainer\.totl_steps'; did you mean 'trainer\.total_steps'"),
    Case("override-unknown-section", train("trainr.seed=1"), r"unknown config section 'trainr'"),
    Case("override-without-value", train("trainer.total_steps"), r"override 'trainer\.total_steps' is not of the form"),
    Case("override-not-an-int", train("trainer.total_steps=abc"), r"'trainer\.total_steps' \(command line\): expected int"),
    Case("override-not-a-float", train("optim.lr=fast"), r"'optim\.lr' \(command line\): expected float"),
    Case("override-list-for-scalar", train("trainer.seed=[1,2]"), r"trainer\.seed"),
    # choices and ranges
    Case("estimator-unknown", train("algo.estimator=ppo"), r"'algo\.estimator' = 'ppo' is not one of"),
    Case("lr-schedule-unknown", train("optim.lr_schedule=step"), r"'optim\.lr_schedule'"),
    Case("logging-level-unknown", train("logging.level=LOUD"), r"'logging\.level'"),
    Case("dtype-unknown", train("model.dtype=fp64"), r"'model\.dtype'"),
    Case("group-size-zero", train("rollout.n=0"), r"'rollout\.n' must be > 0"),
    Case("group-size-one", train("rollout.n=1"), r"rollout\.n = 1: group-relative estimators"),
    Case("adam-beta2-above-1", train("optim.adam_beta2=1.5"), r"'optim\.adam_beta2' = 1\.5 is out of range: must be in \[0, 1\)"),
    Case("adam-beta1-negative", train("optim.adam_beta1=-0.1"), r"'optim\.adam_beta1'"),
    Case("adam-eps-zero", train("optim.adam_eps=0"), r"'optim\.adam_eps'"),
    Case("lr-negative", train("optim.lr=-1e-4"), r"'optim\.lr' must be >= 0"),
    Case("lr-nan", train("optim.lr=.nan"), r"'optim\.lr' = nan must be a finite number"),
    Case("min-lr-above-lr", train("optim.lr=1e-5", "optim.min_lr=1e-4"), r"optim\.min_lr = 0\.0001 is above optim\.lr"),
    Case("warmup-longer-than-run", train("optim.warmup_steps=1000"), r"optim\.warmup_steps = 1000 is more than"),
    Case("top-p-zero", train("rollout.top_p=0"), r"'rollout\.top_p' = 0\.0 is out of range"),
    Case("top-p-above-1", train("rollout.top_p=1.5"), r"'rollout\.top_p'"),
    Case("top-k-zero", train("rollout.top_k=0"), r"'rollout\.top_k' = 0 is out of range: must be -1 \(off\) or >= 1"),
    Case("temperature-zero", train("rollout.temperature=0"), r"'rollout\.temperature' must be > 0"),
    Case("reward-timeout-zero", train("data.reward_timeout_s=0"), r"'data\.reward_timeout_s' = 0\.0 is out of range"),
    Case("request-timeout-zero", train("rollout.request_timeout_s=0"), r"'rollout\.request_timeout_s'"),
    Case("retries-negative", train("rollout.max_retries=-1"), r"'rollout\.max_retries'"),
    Case("gpu-memory-fraction", train("rollout.gpu_memory_utilization=1.5"), r"'rollout\.gpu_memory_utilization'"),
    Case("dual-clip-below-1", train("algo.dual_clip_c=0.5"), r"'algo\.dual_clip_c'"),
    Case("clip-low-above-1", train("algo.eps_low=1.5"), r"'algo\.eps_low' = 1\.5 must be < 1"),
    Case("eval-n-zero", train("trainer.eval_n=0"), r"'trainer\.eval_n'"),
    Case("mini-batches-above-samples", train("trainer.mini_batches=100", "data.prompts_per_step=2", "rollout.n=4"),
         r"trainer\.mini_batches = 100 is more than the 8 samples of a step"),
    # cross-field
    Case("server-mode-without-urls", train("rollout.engine=vllm", "rollout.mode=server"), r"rollout\.server_urls"),
    Case("server-url-without-scheme", train("rollout.engine=vllm", "rollout.mode=server", "rollout.server_urls=[127.0.0.1:8000]"),
         r"rollout\.server_urls: '127\.0\.0\.1:8000' is not an http\(s\) URL"),
    Case("hf-engine-as-server", train("rollout.mode=server", "rollout.server_urls=[http://x:1]"),
         r"rollout\.engine=hf runs in the trainer process"),
    Case("sglang-colocated", train("rollout.engine=sglang"), r"rollout\.engine=sglang"),
    Case("file-source-without-path", train("data.source=file"), r"data\.source=file needs data\.train_path"),
    Case("fp8-without-te", train("model.fp8=e4m3", "model.transformer_impl=local"), r"model\.fp8 needs Transformer Engine"),
    # PAV as the RL estimator
    Case("pav-verifier-without-path", train("algo.estimator=pav"), r"algo\.estimator=pav with algo\.pav_source=verifier needs algo\.pav_path"),
    Case("pav-n-mc-zero", train("algo.estimator=pav", "algo.pav_source=mc", "algo.pav_n_mc=0"), r"'algo\.pav_n_mc' must be > 0"),
    Case("pav-prover-k-zero", train("algo.estimator=pav", "algo.pav_source=mc", "algo.pav_prover_k=0"), r"'algo\.pav_prover_k' must be > 0"),
    Case("pav-source-unknown", train("algo.estimator=pav", "algo.pav_source=oracle"), r"'algo\.pav_source' = 'oracle' is not one of"),
    Case("pav-path-missing", train("algo.estimator=pav", "algo.pav_path={tmp}/nope"), r"algo\.pav_path={tmp}/nope does not exist"),
    Case("pav-path-not-a-verifier", with_files({"v": model_copy()}, train("algo.estimator=pav", "algo.pav_path={tmp}/v")),
         r"algo\.pav_path={tmp}/v is not a PAV verifier"),
    Case("pav-verifier-for-another-policy", lambda t, s: (pav_verifier(t / "v", fingerprint="0" * 16),
         train("algo.estimator=pav", "algo.pav_path={tmp}/v")(t, s))[1],
         r"algo\.pav_path={tmp}/v: the verifier was trained for the policy .*, not model\.path=builtin:tiny_base"),
    Case("pav-verifier-for-another-splitter", lambda t, s: (pav_verifier(t / "v"),
         train("algo.estimator=pav", "algo.pav_path={tmp}/v", "algo.pav_splitter=regex:;")(t, s))[1],
         r"algo\.pav_path={tmp}/v: the verifier reads steps split by \\n, not algo\.pav_splitter=regex:;"),
    Case("pav-verifier-current-prover", train("algo.estimator=pav", "algo.pav_path={tmp}/v", "algo.pav_prover=current"),
         r"algo\.pav_prover=current needs algo\.pav_source=mc"),
    Case("pav-splitter-bad-regex", train("algo.estimator=pav", "algo.pav_source=mc", "algo.pav_splitter=regex:("),
         r"'algo\.pav_splitter': splitter 'regex:\(': not a valid regular expression"),
    Case("sequence-parallel-tp1", train("parallel.sequence_parallel=true"), r"parallel\.sequence_parallel"),
    # parallel layouts not wired in (refused at load time, before a world exists: the `config` command)
    Case("context-parallel", lambda tmp, stack: ["config", "parallel.cp=2"], r"parallel\.cp"),
    Case("expert-parallel-dense", lambda tmp, stack: ["config", "parallel.ep=2"], r"parallel\.ep"),
    # model folders
    Case("model-missing", train("model.path={tmp}/nope"), r"model\.path='{tmp}/nope' does not exist"),
    Case("model-builtin-unknown", train("model.path=builtin:huge"), r"model\.path=builtin:huge: no shipped model"),
    Case("model-is-a-file", with_files({"m": "x"}, train("model.path={tmp}/m")), r"model\.path='{tmp}/m' is not a directory"),
    Case("model-empty-folder", with_files({"m/.keep": ""}, lambda t, s: (os.remove(t / "m/.keep"), train("model.path={tmp}/m")(t, s))[1]),
         r"model\.path={tmp}/m is an empty folder"),
    Case("model-corrupt-config", with_files({"m": model_copy(config=BAD_CFG_JSON)}, train("model.path={tmp}/m")),
         r"model\.path: {tmp}/m/config\.json:4: not valid JSON"),
    Case("model-config-is-a-list", with_files({"m": model_copy(config="[1, 2]")}, train("model.path={tmp}/m")),
         r"config\.json must hold a JSON object"),
    Case("model-unsupported-activation", with_files({"m": model_copy(config=lambda c: json.dumps({**c, "hidden_act": "gelu"}))},
                                                    train("model.path={tmp}/m")), r"model\.path={tmp}/m: hidden_act='gelu'"),
    Case("model-no-config", with_files({"m": model_copy(drop=("config.json",))}, train("model.path={tmp}/m")),
         r"model\.path={tmp}/m has no config\.json"),
    Case("model-no-tokenizer", with_files({"m": model_copy(drop=("tokenizer.json",))}, train("model.path={tmp}/m")),
         r"model\.path={tmp}/m has no tokenizer files"),
    Case("model-no-weights", with_files({"m": model_copy(drop=("model.safetensors",))}, train("model.path={tmp}/m")),
         r"model\.path={tmp}/m has no model\.safetensors"),
    Case("megatron-checkpoint-without-template",
         with_files({"ck/spro_mcore_model.json": json.dumps({"hf_template": "/gone/away"})}, train("model.path={tmp}/ck")),
         r"model\.path={tmp}/ck: a Megatron checkpoint whose HF template folder '/gone/away'"),
    Case("reference-missing", train("model.reference_path={tmp}/ref"), r"model\.reference_path='{tmp}/ref' does not exist"),
    Case("reference-without-weights", with_files({"ref": model_copy(drop=("model.safetensors",))},
                                                 train("model.reference_path={tmp}/ref")),
         r"model\.reference_path={tmp}/ref has no model\.safetensors"),
    # data files
    Case("data-missing", train("data.source=file", "data.train_path={tmp}/none.jsonl"),
         r"data\.train_path: {tmp}/none\.jsonl: no such data file"),
    Case("data-not-utf8", data_case(jsonl(GOOD_ROW).encode() + b'{"prompt": "caf\xe9", "answer": "1"}\n'),
         r"{tmp}/train\.jsonl:2: not UTF-8 text"),
    Case("data-bad-json-line", data_case(jsonl(GOOD_ROW, '{"prompt": "Q"', GOOD_ROW)), r"{tmp}/train\.jsonl:2: not valid JSON"),
    Case("data-row-not-object", data_case(jsonl(GOOD_ROW, "[1, 2]")), r"{tmp}/train\.jsonl:2: a row must be a JSON object"),
    Case("data-missing-answer", data_case(jsonl({"prompt": "Q: 1+1="})), r"{tmp}/train\.jsonl:1: missing field 'answer'"),
    Case("data-missing-prompt", data_case(jsonl({"question": "Q", "answer": "1"})), r"{tmp}/train\.jsonl:1: missing field 'prompt'"),
    Case("data-empty-prompt", data_case(jsonl({"prompt": "", "answer": "1"})), r"{tmp}/train\.jsonl:1: field 'prompt' must be"),
    Case("data-bad-messages", data_case(jsonl({"messages": [{"role": "user"}], "answer": "1"})),
         r"{tmp}/train\.jsonl:1: field 'messages'\[0\]"),
    Case("data-empty-file", data_case(""), r"{tmp}/train\.jsonl: no rows"),
    Case("data-corrupt-parquet", data_case(b"PAR1 this is not parquet PAR1", name="train.parquet"),
         r"{tmp}/train\.parquet: not a readable Parquet file"),
    Case("data-unknown-format", data_case("prompt,answer\nQ,1\n", name="train.csv"), r"{tmp}/train\.csv: unknown data format '\.csv'"),
    Case("data-path-is-folder", with_files({"d/x": "1"}, train("data.source=file", "data.train_path={tmp}/d")),
         r"data\.train_path: {tmp}/d: no such data file"),
    Case("eval-data-bad", data_case(jsonl({"prompt": "Q"}), name="eval.jsonl", key="eval_path"),
         r"data\.eval_path: {tmp}/eval\.jsonl:1: missing field 'answer'"),
    # reward plugins
    Case("reward-unknown-name", train("data.reward_fn=mathh"), r"data\.reward_fn: unknown reward function 'mathh'"),
    Case("reward-module-missing", train("data.reward_fn=no_such_module:fn"), r"data\.reward_fn: .*cannot import module 'no_such_module'"),
    Case("reward-syntax-error", plugin("def reward(r, a):\n    return 1 +\n"), r"data\.reward_fn: .*badplugin_\d+\.py:2: syntax error"),
    Case("reward-raises-at-import", plugin("import os\nraise RuntimeError('needs API_KEY')\n"),
         r"data\.reward_fn: .*raised RuntimeError: needs API_KEY at .*badplugin_\d+\.py:2"),
    Case("reward-missing-function", plugin("def other(r, a):\n    return 0.0\n"), r"data\.reward_fn: .*has no attribute 'reward'"),
    Case("reward-not-callable", plugin("reward = 3\n"), r"data\.reward_fn: .*is not callable"),
    # output folders, resume targets, concurrent runs
    Case("output-dir-is-a-file", with_files({"f": "x"}, train("trainer.output_dir={tmp}/f")),
         r"trainer\.output_dir={tmp}/f is a file, not a folder"),
    Case("output-dir-under-a-file", with_files({"f": "x"}, train("trainer.output_dir={tmp}/f/run")),
         r"trainer\.output_dir={tmp}/f/run: {tmp}/f is a file"),
    Case("checkpoint-dir-is-a-file", with_files({"f": "x"}, train("checkpoint.dir={tmp}/f")), r"checkpoint\.dir={tmp}/f is a file"),
    Case("output-dir-read-only", read_only, r"trainer\.output_dir={tmp}/mnt/out: no permission to write in {tmp}/mnt"),
    Case("output-dir-no-permission", no_permission, r"trainer\.output_dir={tmp}/locked/out: no permission to write in {tmp}/locked"),
    Case("output-disk-full", full_disk, r"no space left on device.*{tmp}/mnt/out"),
    Case("resume-missing", train("checkpoint.resume={tmp}/run/checkpoints/step_9"), r"checkpoint\.resume=.*step_9: no such checkpoint"),
    Case("resume-broken-symlink", lambda t, s: (os.symlink(t / "gone", t / "link"), train("checkpoint.resume={tmp}/link")(t, s))[1],
         r"checkpoint\.resume={tmp}/link is a broken symbolic link"),
    Case("resume-is-a-file", with_files({"ck": "x"}, train("checkpoint.resume={tmp}/ck")), r"checkpoint\.resume={tmp}/ck is a file"),
    Case("metrics-corrupt-line", lambda t, s: (train()(t, s), (t / "run" / "metrics.jsonl").write_text(
        '{"step": 0}\n{"step": 1, "reward/m\n{"step": 2}\n'))[0], r"{tmp}/run/metrics\.jsonl:2: not a metrics row"),
    Case("second-trainer-same-folder", hold_lock, r"trainer\.output_dir={tmp}/run is in use by another trainer \(pid 4242 on testhost\)"),
    # eval and export
    Case("eval-model-missing", lambda t, s: ["eval", "model.path=/no/such/model"], r"model\.path='/no/such/model' does not exist"),
    Case("eval-bad-data", with_files({"e.jsonl": "not json\n"}, lambda t, s: ["eval", "data.source=file",
         f"data.train_path={t}/e.jsonl"]), r"{tmp}/e\.jsonl:1: not valid JSON"),
    Case("export-missing-checkpoint", export_args("{tmp}/nope", "{tmp}/out"), r"checkpoint {tmp}/nope does not exist"),
    Case("export-folder-without-checkpoints", export_args("{tmp}/run", "{tmp}/out"), r"{tmp}/run holds no complete checkpoint"),
    Case("convert-hf-dir-missing", export_args_convert("hf-to-mcore", "--hf-dir", "{tmp}/nope", "--out-dir", "{tmp}/mc"),
         r"no HF config\.json at '{tmp}/nope'"),
    Case("convert-hf-dir-corrupt-config", with_files({"m": model_copy(config=BAD_CFG_JSON)}, export_args_convert(
        "hf-to-mcore", "--hf-dir", "{tmp}/m", "--out-dir", "{tmp}/mc")), r"{tmp}/m/config\.json is not valid JSON"),
    Case("convert-into-existing-model", with_files({"m": model_copy()}, export_args_convert(
        "hf-to-mcore", "--hf-dir", "{tmp}/m", "--out-dir", "{tmp}/run")), r"--out-dir '{tmp}/run' is not empty"),
    Case("convert-mcore-dir-missing", export_args_convert("mcore-to-hf", "--mcore-dir", "{tmp}/nope", "--hf-template",
         str(TINY), "--out-dir", "{tmp}/hf"), r"Megatron checkpoint directory '{tmp}/nope' does not exist"),
    Case("convert-over-an-hf-model", with_files({"ck/spro_mcore_model.json": mcore_meta}, export_args_convert("mcore-to-hf", "--mcore-dir", "{tmp}/ck", "--hf-template", str(TINY), "--out-dir",
                            "{tmp}/run/hf_final")), r"--out-dir '{tmp}/run/hf_final' is not empty"),
    Case("convert-template-missing", with_files({"ck/spro_mcore_model.json": mcore_meta}, export_args_convert("mcore-to-hf", "--mcore-dir", "{tmp}/ck", "--hf-template",
                                                     "{tmp}/gone", "--out-dir", "{tmp}/hf")),
         r"--hf-template '{tmp}/gone' does not exist"),
    # engines (real runs: a fresh process each)
    Case("engine-server-refused", lambda t, s: train(*QUICK, "rollout.engine=vllm", "rollout.mode=server",
         f"rollout.server_urls=[http://127.0.0.1:{closed_port()}]", "rollout.max_retries=2")(t, s),
         r"vllm server at http://127\.0\.0\.1:\d+ refused the connection .* after 3 attempts", subprocess=True,
         max_seconds=60),  # imports included; the retries themselves take 1 + 2 s
    Case("engine-fails-before-first-update", failing_server,
         r"rollout engine failed before the first update .*vllm server unreachable at http://127\.0\.0\.1:\d+ "
         r"\(POST /v1/completions\) after 2 attempts: HTTP 500: engine crashed: out of KV cache\); nothing to save",
         subprocess=True, started=True),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, tmp_path: Path):
    with contextlib.ExitStack() as stack:
        argv = case.setup(tmp_path, stack)
        before = snapshot(tmp_path)
        got = run_subprocess(argv) if case.subprocess else run_in_process(argv)
        check(case, tmp_path, before, got)
        if case.id == "engine-fails-before-first-update":  # nothing saved that could not be saved
            ckpts = tmp_path / "run" / "checkpoints"
            assert not ckpts.exists() or not any(ckpts.iterdir()), list(ckpts.iterdir())


def test_the_table_is_large_enough():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
