"""Command line: ``speech-audit run | extract | gate | report | compare | corpus synth``.

Exit codes: 0 done (and, with a policy, no fail rule broken), 1 a fail rule of the policy is
broken, 2 a usage, input or runtime error, or a rule whose metric the run did not compute.
Errors caused by input or environment (:class:`SpeechAuditError`) print one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from audit.errors import SpeechAuditError
from audit.estimators import PRECISIONS


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with the same settings (flags override it)")
    p.add_argument("--model", help="whisper-tiny.en | ge2e | tiny-random-wav2vec2 | HF id | local folder")
    p.add_argument("--corpus", help="synthetic | librispeech:PATH | folder with manifest.csv")
    p.add_argument("--where", action="append", metavar="COLUMN=VALUE", help="keep matching rows (repeatable)")
    p.add_argument("--segment", type=float, metavar="SECONDS", help="cut utterances into fixed-length segments")
    p.add_argument("--cache-dir", help="embedding store folder (default ~/.cache/speech-audit/store)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--device", help="auto (default: cuda when present) | cpu | cuda | cuda:N")
    p.add_argument("--quantize", choices=["int8"], help="audit the dynamically int8-quantised model (CPU)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let models that ship code load (speechbrain folders or non-speechbrain/ hub ids, HF auto_map)")
    p.add_argument("--skip-bad-audio", action="store_true",
                   help="leave out unusable audio files (each listed) instead of stopping; >1%% dropped weakens")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``speech-audit`` command."""
    parser = argparse.ArgumentParser(prog="speech-audit", description="Privacy audit of speech representations.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="audit a model's layers (default: whisper-tiny.en on the synthetic corpus)")
    _add_common(run)
    run.add_argument("--layers", help="'all' or comma-separated layer indices")
    run.add_argument("--out", help="report folder (default reports/<run-name>)")
    run.add_argument("--quick", action="store_true", help="smaller attacker budgets for a first look (weakens the audit)")
    run.add_argument("--attacker-precision", choices=PRECISIONS,
                     help="the frame attackers' and inversion decoders' arithmetic (default float32; "
                          "bfloat16 autocast is faster on GPUs and AMX CPUs, and weakens the audit)")
    run.add_argument("--policy", help="release policy (TOML [[rule]] tables): exit 1 when a fail rule is broken")
    run.add_argument("--redact", action="store_true",
                     help="report without original audio, transcripts or raw speaker ids (for handing on)")
    ext = sub.add_parser("extract", help="fill the embedding store only")
    _add_common(ext)
    gate = sub.add_parser("gate", help="judge a finished run against a release policy (exit 0 pass, 1 fail, 2 error)")
    gate.add_argument("results", help="results.json of a run (or its folder)")
    gate.add_argument("--policy", required=True, help="TOML policy of [[rule]] tables")
    gate.add_argument("--junit", help="write the verdict as JUnit XML here (one test case per rule)")
    gate.add_argument("--out", help="also re-render the full report with the verdict into this folder")
    report = sub.add_parser("report", help="re-render a run's report from its results.json (no recomputation)")
    report.add_argument("results", help="results.json of a run (or its folder)")
    report.add_argument("--out", help="report folder (default: the results' folder)")
    report.add_argument("--policy", help="judge this policy and show its verdict first")
    report.add_argument("--redact", action="store_true", help="leave out original audio, transcripts and raw ids")
    compare = sub.add_parser("compare", help="put two or more runs side by side (HTML and Markdown)")
    compare.add_argument("runs", nargs="+", help="run folders or results.json files")
    compare.add_argument("--out", required=True, help="folder for compare.html, compare.md and plots")
    corpus = sub.add_parser("corpus", help="corpus tools")
    csub = corpus.add_subparsers(dest="corpus_command", required=True)
    synth = csub.add_parser("synth", help="build the synthetic espeak-ng corpus")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--voices", type=int, default=24)
    synth.add_argument("--sentences", type=int, default=20)
    synth.add_argument("--seed", type=int, default=0)
    return parser


def _config(args: argparse.Namespace):
    from audit.config import AuditConfig, load_config, parse_layers

    cfg = load_config(args.config) if args.config else AuditConfig()
    overrides = {
        "model": args.model, "corpus": args.corpus, "where": args.where, "segment": args.segment,
        "cache_dir": args.cache_dir, "batch_size": args.batch_size, "seed": args.seed,
        "layers": parse_layers(args.layers) if getattr(args, "layers", None) else None,
        "out": getattr(args, "out", None), "quick": True if getattr(args, "quick", False) else None,
        "attacker_precision": getattr(args, "attacker_precision", None),
        "progress": False if args.no_progress else None,
        "device": args.device, "quantize": args.quantize, "skip_bad_audio": True if args.skip_bad_audio else None,
        "trust_remote_code": True if args.trust_remote_code else None,
        "policy": getattr(args, "policy", None), "redact": True if getattr(args, "redact", False) else None,
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    return cfg.validate()


def _print_verdict(verdict: dict) -> None:
    c = verdict["counts"]
    print(f"gate {verdict['status'].upper()} (policy {verdict['policy_name']}): {c['fail']} failed, {c['error']} not "
          f"computed, {c['warn']} warned, {c['pass']} passed")
    for rule in verdict["rules"]:
        if rule["status"] != "pass":
            print(f"  {rule['status'].upper()} {rule['name']}: {rule['message']}")
    weak = verdict.get("weakenings") or []
    if weak:
        print(f"  weakened audit ({len(weak)}; allowed by the policy: "
              f"{', '.join(verdict.get('allow_weakened') or []) or 'none'}):")
        for w in weak:
            print(f"    [{w['kind']}{', allowed' if w.get('allowed') else ''}] {w['text']}")


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from audit.pipeline import AuditPipeline

    results = AuditPipeline(_config(args), argv=["speech-audit", *argv]).run()
    if results.get("worker"):  # a torchrun rank other than 0: it helped build the store, rank 0 reports
        return 0
    out = Path(results["out"])
    s = results.get("summary", {})
    if s:
        ci, sel = s["leakiest_ci95"], s["leakiest_selection_ci95"]
        what = ("verification EER", s.get("leakiest_eer"), "unlinkable = 50%") \
            if s["measure"] == "verification_eer" else \
            ("speaker-ID top-1", s.get("leakiest_top1"), f"chance {100 * s['chance']:.1f}%")
        print(f"leakiest layer {s['leakiest_layer']}: {what[0]} {100 * what[1]:.1f}% "
              f"(95% CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f}%; best of {s['n_compared']} attackers x layers, "
              f"adjusted CI {100 * sel[0]:.1f}-{100 * sel[1]:.1f}%), {what[2]}")
    risks = [r for r in results.get("risks") or [] if r.get("level") != "not measured"]
    if risks:
        print("risk: " + "; ".join(f"{r['threat']} {str(r.get('words') or r['level']).upper()}" for r in risks))
    print(f"report: {out / 'report.html'}  summary: {out / 'summary.md'}  results: {out / 'results.json'}  "
          f"(store {'reused' if results['store']['cache_hit'] else 'built'}, {results['wall_seconds']:.1f} s)")
    return _verdict_exit(results)


def _verdict_exit(results: dict) -> int:
    """Print the gate's verdict when the results hold one; its exit code (0 without a policy)."""
    if not results.get("verdict"):
        return 0
    _print_verdict(results["verdict"])
    return results["verdict"]["exit_code"]


def _load_run(path: str) -> tuple[dict, Path]:
    from audit.results import load_results

    source = Path(path)
    return load_results(source), source if source.is_dir() else source.parent


def _render(results: dict, path: str, out: Path, registry: dict, **kwargs) -> dict:
    """``write_report``, with results too incomplete to render named by their file."""
    from audit.report import write_report
    from audit.results import ResultsError, malformed_results

    try:
        with malformed_results(path):
            return write_report(results, out, registry, **kwargs)
    except ResultsError as err:
        message = str(err)
        raise ResultsError(message if message.startswith(str(path)) else f"{path}: {message}") from None


def _was_redacted(results: dict) -> bool:
    """Whether loaded results come from a redacted report (then every re-render stays redacted)."""
    mode = results.get("report_mode")
    return isinstance(mode, dict) and mode.get("mode") == "redacted"


def _gate(args: argparse.Namespace, argv: list[str]) -> int:
    from attacks import load_families
    from audit.atomic import atomic_save
    from audit.errors import ConfigError
    from audit.gate import evaluate, load_policy
    from audit.report.junit import write_junit
    from audit.results import malformed_results
    from defenses import load_defenses

    registry = load_families()
    policy = load_policy(args.policy, registry, set(load_defenses()))
    results, source = _load_run(args.results)
    with malformed_results(args.results):
        verdict = evaluate(policy, results).to_dict()
    if args.junit:
        junit = Path(args.junit)
        try:
            junit.parent.mkdir(parents=True, exist_ok=True)
            atomic_save(junit, lambda tmp: write_junit(verdict, tmp))
        except OSError as err:
            raise ConfigError(f"--junit {junit}: cannot write ({err.strerror or err})") from None
    if args.out:
        _render({**results, "verdict": verdict}, args.results, Path(args.out), registry, source=source,
                redact=_was_redacted(results))
    _print_verdict(verdict)
    return verdict["exit_code"]


def _report(args: argparse.Namespace, argv: list[str]) -> int:
    from attacks import load_families
    from audit.gate import evaluate, load_policy
    from audit.results import malformed_results
    from defenses import load_defenses

    registry = load_families()
    policy = load_policy(args.policy, registry, set(load_defenses())) if args.policy else None
    results, source = _load_run(args.results)
    out = Path(args.out) if args.out else source
    if policy is not None:
        with malformed_results(args.results):
            results["verdict"] = evaluate(policy, results).to_dict()
    redact = args.redact or _was_redacted(results)
    written = _render(results, args.results, out, registry, source=source, redact=redact)
    print(f"report: {out / 'report.html'}  summary: {out / 'summary.md'}  ({'redacted' if redact else 'full'}, "
          f"{len(written['files'])} files)")
    with malformed_results(args.results):
        return _verdict_exit(written)


def _compare(args: argparse.Namespace, argv: list[str]) -> int:
    from audit.compare import compare_runs
    from audit.results import malformed_results

    out = Path(args.out)
    with malformed_results(" / ".join(args.runs)):
        compare_runs(args.runs, out)
    print(f"comparison: {out / 'compare.html'}  {out / 'compare.md'}")
    return 0


def _extract(args: argparse.Namespace, argv: list[str]) -> int:
    from audit.audio_check import check_corpus_audio
    from audit.distributed import is_main, rank_device
    from audit.extractor import build_extractor
    from audit.pipeline import prepare_corpus
    from audit.store import EmbeddingStore

    cfg = _config(args)
    corpus, _ = check_corpus_audio(prepare_corpus(cfg), skip_bad=cfg.skip_bad_audio, progress=cfg.progress)
    store = EmbeddingStore.build(build_extractor(cfg.model, quantize=cfg.quantize, device=rank_device(cfg.device),
                                                 trust_remote_code=cfg.trust_remote_code),
                                 corpus, cache_dir=cfg.cache_dir,
                                 batch_size=cfg.batch_size, progress=cfg.progress)
    st = store.stats
    if is_main():
        per_rank = f" (per rank: {', '.join(map(str, st.shards_per_rank))})" if st.world_size > 1 else ""
        print(f"store {store.root}: {len(store)} utterances x {store.num_layers} layers; "
              f"{st.shards_computed_all}/{st.shards_total} shards "
              f"computed{per_rank} in {st.wall_seconds:.1f} s")
    return 0


def _synth(args: argparse.Namespace, argv: list[str]) -> int:
    from audit.synth import build_corpus

    folder = build_corpus(args.out, n_voices=args.voices, n_sentences=args.sentences, seed=args.seed)
    print(f"synthetic corpus: {folder / 'manifest.csv'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``speech-audit`` command; returns the exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    warnings.formatwarning = lambda message, category, *rest, **kw: f"speech-audit: warning: {message}\n"
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    handlers = {"run": _run, "extract": _extract, "gate": _gate, "report": _report, "compare": _compare,
                "corpus": _synth}
    try:
        return handlers[args.command](args, argv)
    except SpeechAuditError as exc:
        print(f"speech-audit: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("speech-audit: interrupted; finished store shards are kept, rerun to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last guard: one line for the user, the traceback in a log
        log = _crash_log(argv)
        print(f"speech-audit: error: unexpected {type(exc).__name__}: {_one_line(str(exc))[:300]} (a bug or an "
              f"unsupported input; traceback in {log})", file=sys.stderr)
        return 2


def _one_line(text: str) -> str:
    """``text`` on one line (newlines of nested messages joined with ' | ')."""
    return " | ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _crash_log(argv: list[str]) -> Path:
    """Write the current exception's traceback (and the command line) to a log file; its path."""
    import tempfile
    import time
    import traceback

    from audit.cache import cache_root

    text = f"speech-audit {' '.join(argv)}\n{time.strftime('%Y-%m-%dT%H:%M:%S')}\n\n{traceback.format_exc()}"
    for folder in (cache_root() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            log = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            log.write_text(text, encoding="utf-8")
            return log
        except OSError:
            continue
    return Path("(no writable log folder)")


if __name__ == "__main__":
    sys.exit(main())
