"""Benchmark: weight sync of a model of a given size into each available engine, against a plain memory copy
of the same bytes measured in the same run.

Rows (each the median of --repeats after one warm-up, interleaved so machine noise hits all alike):
- memcpy: `dst.copy_(src)` of every tensor into preallocated buffers (the floor: bytes moved once);
- megatron export: `export_hf_weights` of the same model loaded into Megatron (TP=1, one process) drained
  without an engine (--megatron);
- hf: HfEngine.update_weights (bucketing, casting, copy into the HF model);
- folder write: write_safetensors_folder to --sync-dir (the server-mode transport's first half);
- vllm tensors / vllm folder: VllmEngine.update_weights in process (direct load into the live model, CPU
  repacking, prefix-cache reset), from tensors or through the safetensors folder (if vllm is installed);
  "... reload": the same through vLLM's `reload_weights` (the path before the direct load, and still the one
  of quantized engines); column `repack s`: the part of the row spent in the CPU backend's oneDNN packing of
  linears (`create_onednn_mm`), the rest being copies, allocation and Python;
- megatron -> vllm: the Megatron export into the direct vllm tensors engine (--megatron, vllm installed);
- folder delta 0% / N%: the delta folder transport (rollout.weight_sync_delta) writing a sync in which no
  tensor / the tensors of the first N% of layers changed (each call alternates between two such states), the
  sender's hashing of every tensor included; `MiB sent` shows the bytes each row moves.
The source is the HF state dict of the model (the exporter's output format). Ratios are to memcpy.

    python tools/bench/bench_weight_sync.py [--hidden 512 --layers 8 --vocab 32000] [--repeats 3]
        [--threads 2] [--megatron] [--no-vllm] [--sync-dir /dev/shm/bench_sync] [--delta-layers 0.25]
"""
from __future__ import annotations

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # before torch/vllm are imported
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402


def build_model(path: Path, hidden: int, layers: int, vocab: int, tied: bool) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    heads = hidden // 64  # head_dim 64: one of the sizes vLLM's CPU attention accepts
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
                      max_position_embeddings=2048, tie_word_embeddings=tied, eos_token_id=1, bos_token_id=0)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    return path


def megatron_exporter(model_dir: Path):
    """A callable that exports the Megatron copy of the model as HF tensors (one-process gloo group)."""
    import torch.distributed as dist

    from spro_mcore.models import export_hf_weights, load_model
    from spro_mcore.parallel import initialize_model_parallel
    from spro_mcore.parallel.distributed import free_port

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    initialize_model_parallel(1, 1)
    chunks, arch = load_model(str(model_dir))
    assert dist.get_world_size() == 1
    return lambda: export_hf_weights(chunks, arch, bucket_bytes=512 << 20)


def time_repacking() -> list:
    """A one-item list that accumulates the seconds spent in the CPU backend's oneDNN packing of linears
    (vLLM's `create_onednn_mm`), which the caller resets; stays 0 where vLLM or that kernel is absent."""
    spent = [0.0]
    try:
        import vllm._custom_ops as ops
    except ImportError:
        return spent
    original = ops.create_onednn_mm

    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            spent[0] += time.perf_counter() - t0
    ops.create_onednn_mm = timed
    return spent


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--bucket-bytes", type=int, default=512 << 20)
    ap.add_argument("--megatron", action="store_true", help="also time the Megatron export (TP=1)")
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--sync-dir", default="")
    ap.add_argument("--delta-layers", type=float, default=0.25,
                    help="fraction of layers whose tensors change between the delta rows' syncs")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from spro_mcore.rollout.hf_engine import HfEngine
    from spro_mcore.rollout.weight_sync import iter_buckets
    from spro_mcore.rollout.weight_sync_delta import DeltaSender
    from spro_mcore.rollout.weight_sync_folder import SyncDir, write_safetensors_folder
    from spro_mcore.rollout.weight_sync_folder_delta import write_delta_folder

    work = Path(tempfile.mkdtemp(prefix="bench_weight_sync_"))
    model_dir = build_model(work / "model", args.hidden, args.layers, args.vocab, args.tied)
    from safetensors.torch import load_file

    source = load_file(str(model_dir / "model.safetensors"))
    nbytes = sum(t.numel() * t.element_size() for t in source.values())
    sync = SyncDir(args.sync_dir, "bench")
    sync_dir = sync.path
    print(f"model: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, tied={args.tied}: "
          f"{sum(t.numel() for t in source.values()) / 1e6:.1f} M params, {nbytes / 2**20:.0f} MiB fp32; "
          f"torch threads {torch.get_num_threads()}; folder {sync_dir}")

    dst = {k: torch.empty_like(v) for k, v in source.items()}
    hf = HfEngine(str(model_dir), bucket_bytes=args.bucket_bytes)
    rows = {
        "memcpy": lambda: [dst[k].copy_(v) for k, v in source.items()],
        "hf": lambda: hf.update_weights(source.items()),
        "folder write": lambda: write_safetensors_folder(iter_buckets(source.items(), args.bucket_bytes), sync_dir),
    }
    sent = {name: nbytes for name in rows}
    moved_layers = {f"model.layers.{i}." for i in range(round(args.delta_layers * args.layers))}
    moved = {n for n in source if any(n.startswith(p) for p in moved_layers)}
    stepped = {n: (t + 1e-3 if n in moved else t) for n, t in source.items()}
    for i, (label, states) in enumerate((("folder delta 0%", [source]),
                                         (f"folder delta {args.delta_layers:.0%}", [stepped, source]))):
        sender, turn, folder = DeltaSender(), [0], sync_dir.with_name(f"{sync_dir.name}_delta{i}")

        def delta_write(sender=sender, states=states, turn=turn, folder=folder):
            w = states[turn[0] % len(states)]
            turn[0] += 1
            write_delta_folder(iter_buckets(sender.select(w.items()), args.bucket_bytes), folder, sender)
            sender.commit()
        delta_write()  # the first sync is full
        rows[label] = delta_write
        sent[label] = sum(source[n].numel() * source[n].element_size() for n in moved) if len(states) > 1 else 0
    if args.megatron:
        export = megatron_exporter(model_dir)
        rows["megatron export"] = lambda: [None for _ in export()]
        rows["megatron -> hf"] = lambda: hf.update_weights(export())
    engines = []
    if not args.no_vllm:
        try:
            from spro_mcore.rollout.vllm_engine import VllmEngine
        except ImportError:
            print("vllm not installed: vllm rows skipped")
        else:
            for transport in ("tensors", "folder"):
                for path in ("reload", "auto"):
                    eng = VllmEngine(str(model_dir), kv_cache_memory_bytes=64 << 20, max_model_len=2048,
                                     bucket_bytes=args.bucket_bytes, weight_sync=transport)
                    eng.load_path = path
                    engines.append(eng)
                    label = f"vllm {transport}" + (" reload" if path == "reload" else "")
                    rows[label] = (lambda e: lambda: e.update_weights(source.items()))(eng)
            if args.megatron:
                direct = next(e for e in engines if e.weight_sync == "tensors" and e.load_path == "auto")
                rows["megatron -> vllm"] = lambda: direct.update_weights(export())
    repack = time_repacking()

    times = {name: [] for name in rows}
    repack_times = {name: [] for name in rows}
    for name, fn in rows.items():  # warm-up (first-touch page faults, lazy imports)
        fn()
    for _ in range(args.repeats):
        for name, fn in rows.items():
            repack[0] = 0.0
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            repack_times[name].append(repack[0])
    for eng in engines:
        assert eng.last_load_path == ("reload" if eng.load_path == "reload" else "direct"), eng.last_load_path
    base = statistics.median(times["memcpy"])
    print(f"{'row':<20}{'median s':>10}{'MiB sent':>10}{'x memcpy':>10}{'repack s':>10}")
    for name, ts in times.items():
        med = statistics.median(ts)
        rep = statistics.median(repack_times[name])
        print(f"{name:<20}{med:>10.4f}{sent.get(name, nbytes) / 2**20:>10.0f}{med / base:>10.2f}"
              f"{rep:>10.4f}")
    for eng in engines:
        eng.close()
    hf.close()
    sync.cleanup()
    for i in range(2):
        shutil.rmtree(sync_dir.with_name(f"{sync_dir.name}_delta{i}"), ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
