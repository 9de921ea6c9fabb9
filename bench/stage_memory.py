"""Working memory of the stages beside the decoding loop, measured with their real architectures.

Random weights in the real shapes: T5-base's encoder over MAX_TEXT_TOKENS (the CFG pair),
htdemucs over a 30 s stereo window (the pair: the melody and its null copy, padded alike), and
EnCodec 32 kHz decoding S seconds of tokens. Each runs in a process of its own; the figure is the
peak it adds over the process after loading: resident set high-water mark on a CPU (fp32),
`max_memory_allocated` on a GPU. The per-second slope of the codec is what
`musicgen_cog/model/memory.py` scales by the longest output; compare its constants with these.

    python -m bench.stage_memory        (about two minutes on a 2-core CPU)
"""

from __future__ import annotations

import json
import subprocess
import sys

from musicgen_cog.model.conditions import MAX_TEXT_TOKENS

STAGE = """
import json, resource, sys, torch
stage, seconds = sys.argv[1], float(sys.argv[2])
cuda = torch.cuda.is_available()
device = "cuda" if cuda else "cpu"
torch.set_grad_enabled(False)

def peak():
    if cuda:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

if stage == "t5":
    from transformers import T5Config, T5EncoderModel
    model = T5EncoderModel(T5Config(d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64)).to(device).eval()
    inputs = torch.randint(0, 32000, (2, int(seconds)), device=device)
    run = lambda: model(input_ids=inputs).last_hidden_state
elif stage == "demucs":
    from demucs.apply import apply_model
    from demucs.htdemucs import HTDemucs
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"]).to(device).eval()
    wav = torch.randn(2, 2, int(44100 * seconds), device=device) * 0.1
    run = lambda: apply_model(model, wav, device=device)
else:
    from transformers import EncodecConfig, EncodecModel
    config = EncodecConfig(
        sampling_rate=32000, audio_channels=1, num_filters=64, upsampling_ratios=[8, 5, 4, 4], hidden_size=128,
        codebook_size=2048, codebook_dim=128, target_bandwidths=[2.2], num_lstm_layers=2, use_causal_conv=False,
        normalize=False, chunk_length_s=None, overlap=None, compress=2, residual_kernel_size=3,
    )
    model = EncodecModel(config).to(device).eval()
    codes = torch.randint(0, 2048, (1, 1, 4, int(50 * seconds)), device=device)
    run = lambda: model.decode(codes, [None])[0]
before = peak()
if cuda:
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
out = run()
print(json.dumps({"stage": stage, "seconds": seconds, "bytes": peak() - before}))
"""

RUNS = [("t5", MAX_TEXT_TOKENS), ("demucs", 30.0), ("codec", 10.0), ("codec", 30.0)]


def measure(stage: str, amount: float) -> int:
    done = subprocess.run(
        [sys.executable, "-c", STAGE, stage, str(amount)], capture_output=True, text=True, timeout=900, check=True
    )
    return int(json.loads(done.stdout.strip().splitlines()[-1])["bytes"])


def main() -> None:
    figures = {(stage, amount): measure(stage, amount) for stage, amount in RUNS}
    print("stage | input | working memory")
    for (stage, amount), size in figures.items():
        unit = "tokens" if stage == "t5" else "s"
        print(f"{stage} | {amount:g} {unit} | {size / 2**20:.0f} MiB")
    slope = (figures["codec", 30.0] - figures["codec", 10.0]) / 20.0
    print(f"codec per second of audio: {slope / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
