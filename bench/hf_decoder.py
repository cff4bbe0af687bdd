"""KV-cached vs uncached generation with the hf_decoder (a GPT-2-small-sized random LM), measured interleaved.

    python -m bench.hf_decoder [--layers 12] [--width 768] [--new-tokens 48] [--batch 4] [--reps 3]

A random GPT-2 of the given size (GPT-2 small: 12 layers, width 768) with a tiny BPE tokenizer is saved to a
temporary folder and loaded as ``model/decoder=hf`` would; the network is the tiny scratch encoders + early
fusion (a prefix of ~100 media tokens). Each repetition times greedy generation of ``--new-tokens`` tokens with
and without the cache, alternated so machine load falls on both; the cached and uncached tokens must agree.
Prints the median times and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from mmgpt.generation import GenerationConfig, generate
from mmgpt.registry import build_network
from tests.conftest import make_batch
from tests.helpers.tiny import DIM, tiny_hf_lm, tiny_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--fusion", default="early")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tiny_hf_lm(folder, n_embd=args.width, n_layer=args.layers, n_head=max(1, args.width // 64), n_positions=512)
        spec = tiny_spec(args.fusion)
        spec["decoder"] = {"type": "hf_decoder", "name_or_path": folder, "dim": DIM, "max_length": 128}
        net = build_network(spec, 5).eval()
    batch = make_batch(args.batch)
    times: dict[bool, list[float]] = {True: [], False: []}
    tokens: dict[bool, list] = {}
    # Never stop early at EOS, so every run writes exactly --new-tokens tokens: an untied output layer whose EOS
    # row is pushed down (the input embeddings, where EOS is also the BOS, stay as they are).
    head = net.decoder.lm.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    with torch.no_grad():
        head.weight[net.decoder_tokenizer.EOS] -= 1e3
    for _ in range(args.reps):
        for use_cache in (True, False):
            cfg = GenerationConfig(max_new_tokens=args.new_tokens, use_cache=use_cache)
            start = time.perf_counter()
            out = generate(net, batch, config=cfg)
            times[use_cache].append(time.perf_counter() - start)
            tokens[use_cache] = out.tokens.tolist()
    assert tokens[True] == tokens[False], "cached and uncached generation differ"
    cached, uncached = statistics.median(times[True]), statistics.median(times[False])
    print(f"hf_decoder {args.layers} layers x {args.width}, {args.fusion} prefix, batch {args.batch}, "
          f"{len(tokens[True][0])} new tokens, {torch.get_num_threads()} threads: cached {cached:.2f} s, "
          f"uncached {uncached:.2f} s, ratio {uncached / cached:.1f}x (median of {args.reps}, interleaved)")


if __name__ == "__main__":
    main()
