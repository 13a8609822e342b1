"""`openrtc capacity plan`: how many concurrent sessions of a mix fit on a set of GPUs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from openrtc.capacity.arch import DTYPE_BYTES, MODELS, load
from openrtc.capacity.classes import DEFAULT_TEXT, Classes
from openrtc.capacity.plan import CONTEXTS, GPUS_GB, MAX_SEQS, RESERVE, Plan, parse_mix, plan
from openrtc.cli.parser import SUMMARIES
from openrtc.errors import ConfigError, OpenRTCError


def add_parser(sub: Any) -> None:
    capacity = sub.add_parser(
        "capacity",
        help=SUMMARIES["capacity"],
        description="Capacity planning for self-served models.",
    )
    commands = capacity.add_subparsers(dest="capacity_command", metavar="CAPACITY_COMMAND", required=True)
    p = commands.add_parser(
        "plan",
        help="how many concurrent sessions of a mix fit on N GPUs",
        description="Free memory per GPU set = HBM x (1 - reserve) - weights; KV per session = its "
        "class's representative context x the model's KV bytes per token; sessions = free / the mix's "
        "average, at most --max-seqs. Prints the answer, what binds it, and every assumption.",
    )
    p.add_argument(
        "--model", required=True, metavar="NAME|PATH", help=f"{', '.join(MODELS)}, or a config.json"
    )
    p.add_argument("--gpu", required=True, choices=list(GPUS_GB), help="GPU type (memory as marketed)")
    p.add_argument("--gpus", type=int, default=1, metavar="N", help="GPUs in the set (default: 1)")
    p.add_argument("--weights", choices=("bf16", "fp16", "fp8", "int8", "int4"), default="bf16")
    p.add_argument("--kv", choices=list(DTYPE_BYTES), default="bf16", help="KV cache type (default: bf16)")
    p.add_argument(
        "--mix",
        default="light=1",
        metavar="CLASS=W,...|observed",
        help="the workload: class weights, or `observed` from the event log (default: light=1)",
    )
    p.add_argument(
        "--context",
        metavar="CLASS=TOKENS,...",
        help="representative context per class (default: "
        + ",".join(f"{c}={t}" for c, t in CONTEXTS.items())
        + ")",
    )
    p.add_argument(
        "--classes", default=DEFAULT_TEXT, help=f"class bounds, for --mix observed (default: {DEFAULT_TEXT})"
    )
    p.add_argument(
        "--since", metavar="WHEN", help="with --mix observed: today, 7d, 30d, ... (default: everything)"
    )
    p.add_argument("--log-dir", type=Path, metavar="DIR", help="with --mix observed: the event log's folder")
    p.add_argument(
        "--reserve", type=float, default=RESERVE, help=f"fraction of HBM kept back (default: {RESERVE:g})"
    )
    p.add_argument(
        "--max-seqs", type=int, default=MAX_SEQS, help=f"the engine's sequence limit (default: {MAX_SEQS})"
    )
    p.add_argument("--params-b", type=float, help="parameters in billions, for a model from a config.json")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(command_parser=p)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        arch = load(args.model)
        contexts = {c: int(t) for c, t in parse_mix(args.context).items()} if args.context else None
        mix, observed = (_observed(args), True) if args.mix == "observed" else (parse_mix(args.mix), False)
        answer = plan(
            arch,
            args.gpu,
            args.gpus,
            args.weights,
            args.kv,
            mix,
            contexts,
            args.reserve,
            args.max_seqs,
            args.params_b,
        )
    except ConfigError as exc:
        parser.error(str(exc))
    except OpenRTCError as exc:
        print(f"openrtc capacity: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**answer.as_dict(), "observed": observed}, indent=2))
    else:
        sys.stdout.write(text(answer, observed))
    return 0


def _observed(args: argparse.Namespace) -> dict[str, float]:
    """Sessions of the event log by class (their cumulative input plus output tokens)."""
    from openrtc.cli.stats import check_log_folder
    from openrtc.stats.report import parse_since
    from openrtc.stats.summary import load_summaries
    from openrtc.usage.eventlog import default_log_dir
    from openrtc.usage.reader import Problems

    classes = Classes.parse(args.classes)
    folder = args.log_dir or default_log_dir()
    check_log_folder(folder)
    since, until = parse_since(args.since, time.time()) if args.since else (None, None)
    problems = Problems()
    counts: dict[str, float] = {}
    for summary in load_summaries(folder, since, until, problems):
        totals = summary.totals
        name = classes.of(totals.input_tokens + totals.output_tokens)
        counts[name] = counts.get(name, 0) + 1
    for warning in problems.warnings:
        print(f"openrtc capacity: warning: {warning}", file=sys.stderr)
    if not counts:
        raise OpenRTCError(f"no session in {folder} to take a mix from")
    return counts


def text(p: Plan, observed: bool) -> str:
    a = p.assumptions
    gb = 1e9
    mix = ", ".join(f"{c} {w:.0%}" for c, w in a["mix"].items())
    lines = [
        f"{p.sessions} concurrent sessions fit ({', '.join(f'{n} {c}' for c, n in p.by_class.items())}); "
        f"bound by {BINDS[p.binding]}.",
        "",
        f"model        {a['model']}: {a['params_b']:g}B parameters, "
        f"KV {p.kv_bytes_per_token:,.0f} bytes a token ({a['kv_dtype']})",
        f"GPUs         {a['gpus']} x {a['gpu']} ({a['gpu_gb']} GB) = {p.hbm_bytes / gb:,.1f} GB",
        f"weights      {p.weights_bytes / gb:,.1f} GB ({a['weights_dtype']})",
        f"reserve      {p.reserve_bytes / gb:,.1f} GB "
        f"({a['reserve']:.0%}: activations, CUDA graphs, the runtime)",
        f"KV free      {p.free_kv_bytes / gb:,.1f} GB",
        f"mix          {mix}{' (observed in the event log)' if observed else ''}",
    ]
    for c, size in p.kv_bytes_per_session.items():
        lines.append(
            f"  {c:<10} {a['contexts'][c]:>9,} tokens of context -> {size / gb:,.3f} GB of KV a session"
        )
    lines += [
        f"sequences    at most {a['max_seqs']} (the engine's limit)",
        "",
        "Assumed: tensor parallelism splits weights and KV evenly; memory as marketed (10^9 bytes);",
        "a session's KV is its current context, not its cumulative tokens.",
    ]
    return "\n".join(lines) + "\n"


BINDS = {
    "kv_cache": "the KV cache memory",
    "max_seqs": "the engine's sequence limit (--max-seqs)",
    "weights": "the weights: they do not fit on these GPUs",
}
