"""``breadcrumbs generate``: decode one prompt with beacons; print the reasoning and KV figures."""

from __future__ import annotations

import argparse
import json

from breadcrumbs_vllm.spec import parse_ratio


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate from one prompt and report KV entries")
    p.add_argument("prompt", help="the prompt (raw text unless --chat)")
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.add_argument("--ratio", default="none", help="compression ratio, or 'none'")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--greedy", action="store_true", help="argmax decoding (default: sample)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action="store_true", help="apply the chat template to the prompt")
    p.add_argument("--engine", choices=("reference", "vllm"), default="reference",
                   help="the PyTorch reference engine or vLLM with the breadcrumbs plugin")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from breadcrumbs_vllm.checkpoint import read_breadcrumbs_config
    from breadcrumbs_vllm.tokenizer import load_tokenizer

    ratio = parse_ratio(args.ratio)
    if args.max_tokens < 1:
        raise ValueError("--max-tokens must be at least 1")
    bc = read_breadcrumbs_config(args.model)
    bc.check_ratio(ratio)
    tokenizer = load_tokenizer(args.model)
    if args.chat:
        prompt_ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": args.prompt}], add_generation_prompt=True, tokenize=True,
            return_dict=False)
    else:  # exactly how vLLM's LLM.generate tokenises a string prompt
        prompt_ids = tokenizer(args.prompt).input_ids
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    temperature = 0.0 if args.greedy else args.temperature
    if args.engine == "vllm":
        from breadcrumbs_vllm.vllm_plugin.offline import generate_with_vllm

        out = generate_with_vllm(args.model, prompt_ids, ratio, args.max_tokens,
                                 greedy=temperature == 0.0, seed=args.seed)
    else:
        from breadcrumbs_vllm.reference import GenerationRequest, ReferenceEngine

        res = ReferenceEngine.from_checkpoint(args.model).generate([GenerationRequest(
            prompt_ids, ratio=ratio, max_tokens=args.max_tokens, temperature=temperature,
            seed=args.seed)])[0]
        out = {
            "token_ids": res.token_ids,
            "text": tokenizer.decode(res.token_ids, skip_special_tokens=True),
            "finish_reason": res.finish_reason,
            "num_beacons": res.num_beacons,
            "peak_kv_entries": res.peak_kv_entries,
            "mean_kv_entries": res.mean_kv_entries,
        }
    out = {"engine": args.engine, "ratio": ratio, "prompt_tokens": len(prompt_ids), **out}
    if args.json:
        print(json.dumps(out))
    else:
        print(out["text"])
        print(f"\n[{args.engine}] ratio={'none' if ratio is None else ratio} "
              f"prompt={len(prompt_ids)} generated={len(out['token_ids'])} "
              f"beacons={out['num_beacons']} finish={out['finish_reason']} "
              f"peak_kv={out['peak_kv_entries']} mean_kv={out['mean_kv_entries']:.1f}")
    return 0
