"""Checkpoint conversion for real (saving runs the torchrun tools: megatron's checkpoint writer forks, which
the daemonic test processes of tests/multiproc.py may not do): HF -> Megatron dist checkpoint -> HF is bit-exact across TP/PP layouts
(written at TP=2 by the torchrun tool, read back at PP=2; written at PP=2, read back at TP=1), keeps the
weights' dtype, and bad input ends in one clear error."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.models import tiny_hf
from tests.multiproc import run_in_processes

pytestmark = pytest.mark.dist
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _port():
    from spro_mcore.parallel import free_port

    return free_port()


def _to_hf(mcore_dir, template, out_dir, tp, pp, corrupt_copy=None):
    from spro_mcore.models.convert import convert_main

    rc = convert_main(["mcore-to-hf", "--mcore-dir", mcore_dir, "--hf-template", template, "--out-dir", out_dir,
                       "--tp", str(tp), "--pp", str(pp)])
    if corrupt_copy is None:
        return rc, None
    from spro_mcore.models import load_model

    shutil.copytree(mcore_dir, corrupt_copy)
    os.remove(os.path.join(corrupt_copy, sorted(f for f in os.listdir(corrupt_copy) if f.endswith(".distcp"))[0]))
    try:
        load_model(corrupt_copy)
    except Exception as e:  # noqa: BLE001
        return rc, f"{type(e).__name__}: {e}"
    return rc, "loaded a checkpoint with a missing shard file"


def _run_tool(cmd, timeout=240):
    """Run a tool in its own session; on timeout kill the whole group (torchrun's workers included)."""
    import signal

    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, stderr


def _assert_bit_exact(a_dir, b_dir):
    from safetensors.torch import load_file

    a, b = load_file(f"{a_dir}/model.safetensors"), load_file(f"{b_dir}/model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert json.load(open(f"{a_dir}/config.json")) == json.load(open(f"{b_dir}/config.json"))


def test_tp2_tool_checkpoint_reads_back_at_pp2_bit_exact(tmp_path):
    hf = tiny_hf.make_tiny(str(tmp_path / "hf"), "qwen3", dtype=torch.bfloat16, vocab=301)
    ckpt, out = str(tmp_path / "mcore"), str(tmp_path / "hf_out")
    rc, stderr = _run_tool([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                            "--master-port", str(_port()), "tools/convert_hf_to_mcore.py",
                            "--hf-dir", hf, "--out-dir", ckpt, "--tp", "2"])
    assert rc == 0, stderr[-3000:]
    meta = json.load(open(f"{ckpt}/spro_mcore_model.json"))
    assert (meta["model_type"], meta["dtype"], meta["padded_vocab_size"], meta["saved_with"]["tp"]) == (
        "qwen3", "bfloat16", 384, 2)
    run_in_processes(_to_hf, 2, ckpt, hf, out, 1, 2)
    _assert_bit_exact(hf, out)


def test_pp2_checkpoint_reads_back_at_tp1_bit_exact_and_corruption_is_reported(tmp_path):
    hf = tiny_hf.make_tiny(str(tmp_path / "hf"), "qwen2", tied=True)
    ckpt, out = str(tmp_path / "mcore"), str(tmp_path / "hf_out")
    rc, stderr = _run_tool([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                            "--master-port", str(_port()), "tools/convert_hf_to_mcore.py",
                            "--hf-dir", hf, "--out-dir", ckpt, "--pp", "2"])
    assert rc == 0, stderr[-3000:]
    _, error = run_in_processes(_to_hf, 1, ckpt, hf, out, 1, 1, str(tmp_path / "broken"))[0]
    _assert_bit_exact(hf, out)
    assert error.startswith("CheckpointError: cannot load Megatron checkpoint"), error


def test_bad_inputs_give_one_clear_error(tmp_path):
    from spro_mcore.errors import UserError
    from spro_mcore.models.convert import convert_main
    from spro_mcore.models.hf_checkpoint import HFSafetensorsReader

    with pytest.raises(UserError, match="no HF config.json"):
        convert_main(["hf-to-mcore", "--hf-dir", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "o")])
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UserError, match="unsupported architecture 'GPT2LMHeadModel'"):
        convert_main(["hf-to-mcore", "--hf-dir", str(gpt2), "--out-dir", str(tmp_path / "o")])
    with pytest.raises(UserError, match="not a spro-mcore Megatron checkpoint"):
        convert_main(["mcore-to-hf", "--mcore-dir", str(gpt2), "--hf-template", str(gpt2), "--out-dir", "x"])
    (gpt2 / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UserError, match="cannot read safetensors file"):
        HFSafetensorsReader(str(gpt2)).get("model.embed_tokens.weight")
    # the tool prints one line and exits 2
    rc, stderr = _run_tool([sys.executable, "tools/convert_hf_to_mcore.py", "--hf-dir", str(gpt2), "--out-dir", "o"],
                           timeout=120)
    assert rc == 2
    assert stderr.strip().splitlines()[-1].startswith("convert hf-to-mcore: error: unsupported architecture")
