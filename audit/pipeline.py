"""The audit pipeline: corpus -> store -> per-layer attacks -> results -> gate -> report.

:class:`AuditPipeline` has a small public API (``run``); the steps live in ``_prepare_*``
helpers and always produce the same result type, a JSON-ready dict following
:data:`audit.results.SCHEMA_VERSION`.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from attacks import load_families
from audit import plots
from audit.audio_check import check_corpus_audio, skipped_weakening
from audit.config import AuditConfig
from audit.corpus import Corpus, load_corpus
from audit.distributed import is_main, rank_device
from audit.defense_runner import (DefensePlan, check_defense_layers, defenses_name_leakiest, plan_defense_jobs,
                                  plan_defenses)
from audit.embeddings import EmbeddingSet, corpus_attributes, corpus_grouping, layer_set
from audit.errors import ConfigError, CorpusError
from audit.estimators import native_bfloat16
from audit.extractor import Extractor, build_extractor, resolve_device
from audit.family import AttackFamily, RunContext, plan_splits, select_layers
from audit.gate import check_policy, evaluate, load_policy
from audit.job_cache import JobCache, canonical, family_modules
from audit.jobs import LayerJob, WorkerPool, attack_one, run_jobs
from audit.report import write_report
from audit.results import SCHEMA_VERSION, listed_files
from audit.splits import Split
from audit.store import EmbeddingStore
from audit.summary import headline, headline_measures, leakiest
from audit.timeline import RunTimeline
from audit.weakening import DEFENSES, Weakening
from defenses import load_defenses

#: The threat model's opening and closing; each family run adds its own part (``AttackFamily.threat_model``).
THREAT_MODEL_OPENING = ("The attacker holds the audited layer's embeddings (frame-level sequences or per-utterance "
                        "averages) and a labelled side corpus of its own, and trains on it; every attacker is "
                        "evaluated on held-out data.")
THREAT_MODEL_CLOSING = ("Leakage above chance means the embeddings identify or describe people; they are not "
                        "anonymous.")


def threat_model(families: dict[str, AttackFamily]) -> str:
    """The run's threat model in words, built from the threat and threat-model text of each family run."""
    parts = [f"({i}) {f.threat[:1].upper() + f.threat[1:]}: {f.threat_model or f.description}"
             for i, f in enumerate((f for f in families.values() if f.threat), start=1)]
    return " ".join([THREAT_MODEL_OPENING, *parts, THREAT_MODEL_CLOSING])


def run_weakenings(cfg: AuditConfig, infeasible: dict[str, str], skipped_audio: list[str],
                   defense_infeasible: dict[str, str]) -> list[Weakening]:
    """Every weakening of a run: its settings', the families the corpus cannot measure, dropped audio, and the
    families the defense comparison cannot run on its evaluated speakers."""
    return (cfg.weakenings()
            + [Weakening("family_not_measurable", f"attack family {n!r} not measurable on this corpus: {r}", (n,))
               for n, r in infeasible.items()]
            + [Weakening("skipped_audio", line) for line in skipped_audio]
            + [Weakening("defense_attacks", f"defense comparison: attack family {n!r} cannot run on the evaluated "
                                            f"speakers: {r}", (DEFENSES,)) for n, r in defense_infeasible.items()])


def environment() -> dict:
    """Versions that determine the numbers (for reproduction)."""
    import sklearn
    import torch
    import transformers

    return {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
            "transformers": transformers.__version__, "scikit-learn": sklearn.__version__,
            "numpy": np.__version__, "torch_threads": torch.get_num_threads()}


def prepare_corpus(cfg: AuditConfig) -> Corpus:
    """The corpus a config audits: loaded, filtered by ``where`` and cut by ``segment``."""
    corpus = load_corpus(cfg.corpus, seed=cfg.seed, progress=cfg.progress)
    if cfg.where:
        corpus = corpus.where(cfg.where)
    if cfg.segment:
        corpus = corpus.segmented(cfg.segment)
    return corpus


def corpus_labels(corpus: Corpus) -> EmbeddingSet:
    """The corpus's labels (speakers, recordings, attributes) as an embedding-free set, for splits and checks."""
    return EmbeddingSet(np.zeros((len(corpus), 0), dtype=np.float32), np.array(corpus.speakers),
                        [u.utt_id for u in corpus], corpus_attributes(corpus),
                        transcripts=np.array([u.transcript for u in corpus], dtype=object),
                        grouping=corpus_grouping(corpus))


class AuditPipeline:
    """Run one audit from an :class:`AuditConfig`; ``run()`` returns the results dict."""

    def __init__(self, config: AuditConfig, argv: list[str] | None = None) -> None:
        self.config = config
        self.argv = list(argv) if argv is not None else None

    def run(self) -> dict:
        """Check feasibility, extract (or reuse) embeddings, attack every selected layer, write the report.

        Everything that can fail without the audited model's embeddings (config, corpus,
        splits and feasibility of every family, the families' own models) is checked before
        extraction, and so is the release policy (``policy``): every rule's metric, family and layer.
        With a policy, ``results["verdict"]`` holds the gate's verdict and its ``exit_code``.
        """
        cfg = self.config.validate().effective()
        t0 = time.perf_counter()
        timeline = RunTimeline()
        out = Path(cfg.out or Path("reports") / cfg.run_name())
        registry = load_families()
        policy = load_policy(cfg.policy, registry, set(load_defenses())) if cfg.policy else None
        if is_main():
            check_writable(out)
        corpus = prepare_corpus(cfg)
        n_listed = len(corpus)
        corpus, bad_audio = check_corpus_audio(corpus, skip_bad=cfg.skip_bad_audio, progress=cfg.progress)
        for line in skipped_weakening(bad_audio, n_listed):
            warnings.warn(f"weakened audit: {line}", stacklevel=2)
        labels = corpus_labels(corpus)
        splits, infeasible = self._prepare_splits(cfg, registry, labels)
        defense_plan = plan_defenses(cfg, registry, labels)
        if cfg.trust_remote_code:
            warnings.warn("trust_remote_code: models that ship code may run it (speechbrain YAML tags, Hugging Face "
                          "auto_map); recorded in the report", stacklevel=2)
        extractor = build_extractor(cfg.model, quantize=cfg.quantize, device=rank_device(cfg.device),
                                    trust_remote_code=cfg.trust_remote_code)
        layers = self._prepare_layers(cfg, extractor)
        check_defense_layers(cfg, extractor.num_layers)
        if policy is not None:
            check_policy(policy, list(splits), infeasible, extractor.num_layers, bool(cfg.defenses))
        run = RunContext(seed=cfg.seed, out_dir=out, progress=cfg.progress, n_layers=len(layers),
                         device=resolve_device(rank_device(cfg.device)), attacker_precision=cfg.attacker_precision,
                         trust_remote_code=cfg.trust_remote_code)
        if run.attacker_precision == "bfloat16" and not native_bfloat16(run.device):
            warnings.warn(f"attacker_precision='bfloat16': {run.device} has no native bfloat16 (AVX512-BF16 or AMX "
                          "on a CPU), so torch emulates it and the attackers train slower than in float32",
                          stacklevel=2)
        extractor.share_models(run.once)
        for name in splits:
            if registry[name].preflight is not None and is_main():
                registry[name].preflight(cfg.settings(name), run)
        timeline.add_phase("checks and setup", timeline.origin)
        with timeline.phase("store"):
            store = EmbeddingStore.build(extractor, corpus, cache_dir=cfg.cache_dir, batch_size=cfg.batch_size,
                                         progress=cfg.progress)
        if not is_main():
            # Under torchrun every rank helps build the store; only rank 0 attacks and reports.
            return {"worker": True, "store": {"path": str(store.root)}}
        # Small dense problems: multi-threaded BLAS only adds synchronisation cost (measured 20x slower
        # logistic regression with 2 threads on a busy 2-core machine), so attackers run on one BLAS thread.
        every_layer = {n: s for n, s in splits.items() if getattr(cfg.settings(n), "layers", None) is None}
        jobs = job_cache(store, corpus, run, registry, out)
        # One pool for the second pass and the defense comparison, started now: its workers import torch while this
        # process runs the first pass.
        timeline.workers = self._pool_workers(cfg, splits, defense_plan)
        with WorkerPool(timeline.workers, store, corpus, run, timeline) as pool:
            with threadpool_limits(limits=1, user_api="blas"):
                with timeline.phase("first pass"):
                    layer_results = [self._attack_layer(cfg, registry, every_layer, store, corpus, layer, run)
                                     for layer in tqdm(layers, desc="attack layers", disable=not cfg.progress)]
                defenses = self._second_pass_and_defenses(cfg, registry, splits, store, corpus, layer_results,
                                                          extractor.num_layers, run, defense_plan, jobs, pool,
                                                          timeline)
        results = {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "speech-audit", "version": _version()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "invocation": {"argv": self.argv} if self.argv is not None else {},
            "config": cfg.to_dict(),
            "environment": {**environment(), "device": run.device, "attacker_precision": run.attacker_precision,
                            "trust_remote_code": cfg.trust_remote_code},
            "model": {**extractor.describe(), "fingerprint": extractor.fingerprint()},
            "corpus": {"spec": cfg.corpus, "description": corpus.describe(), "n_utterances": len(corpus),
                       "n_speakers": len(set(corpus.speakers)), "total_seconds": round(corpus.total_seconds, 2),
                       "n_recordings": len({u.recording for u in corpus}),
                       "n_sessions": len({u.session for u in corpus}),
                       "filters": list(corpus.filters), "segment_seconds": corpus.segment_seconds,
                       "fingerprint": corpus.fingerprint(), "listing_fingerprint": corpus.listing_fingerprint()},
            "store": {"path": str(store.root), "cache_hit": store.stats.cache_hit,
                      "shards_computed": store.stats.shards_computed_all, "world_size": store.stats.world_size,
                      "model_seconds": round(store.stats.model_seconds, 2),
                      "audio_seconds": round(store.stats.audio_seconds, 2),
                      "wall_seconds": round(store.stats.wall_seconds, 2),
                      "duration_source": store.duration_source},
            "threat_model": threat_model({n: registry[n] for n in cfg.attacks}),
            "weakened": [w.to_dict() for w in run_weakenings(
                cfg, infeasible, skipped_weakening(bad_audio, n_listed),
                defense_plan.infeasible if defense_plan is not None else {})],
            "skipped_audio": [b.to_dict() for b in bad_audio],
            "families_not_measurable": infeasible,
            "splits": {name: split.describe() for name, split in splits.items()},
            "layers": layer_results,
        }
        results["summary"] = headline(layer_results)
        results["leakiest"] = leakiest(layer_results, headline_measures(registry))
        if defense_plan is not None:
            results["defense_plan"] = defense_plan.describe(labels)
            results["defenses"] = defenses
        results["resumed_jobs"] = jobs.hits_
        with timeline.phase("figures"):
            results["figures"] = self._maps(cfg, store, corpus, results["summary"], out)
        results["files"] = [f["file"] for f in results["figures"]] + [
            f for la in layer_results for f in listed_files(la.get("attacks"))]
        results["wall_seconds"] = round(time.perf_counter() - t0, 2)
        results["timeline"] = timeline.to_dict()
        if policy is not None:
            results["verdict"] = evaluate(policy, results).to_dict()
        results = write_report(results, out, registry, redact=cfg.redact)
        jobs.clear()  # the run is complete: nothing left to resume
        results["out"] = str(out)
        return results

    @staticmethod
    def _prepare_splits(cfg: AuditConfig, registry: dict[str, AttackFamily],
                        labels: EmbeddingSet) -> tuple[dict[str, Split], dict[str, str]]:
        """Each selected family's split, made from labels before extraction; families that cannot run, with why.

        A family the config names in ``attacks`` that cannot run on this corpus stops the audit
        with the reason. A default family that cannot run is left out with a one-line warning
        naming the reason (recorded in the results, and a weakening).
        """
        splits, infeasible = plan_splits({n: registry[n] for n in cfg.attacks}, cfg.settings, labels, cfg.seed)
        if infeasible and not cfg.attacks_by_default:
            raise CorpusError(f"corpus {cfg.corpus}: too small for the chosen attack families: "
                              + "; ".join(f"{n}: {r}" for n, r in infeasible.items())
                              + "; drop them from 'attacks' or use a corpus with more speakers")
        for name, reason in infeasible.items():
            warnings.warn(f"attack family {name!r} cannot run on this corpus: {reason}", stacklevel=2)
        if not splits:
            raise CorpusError("no attack family can run on this corpus: "
                              + "; ".join(f"{n}: {r}" for n, r in infeasible.items()))
        return splits, infeasible

    @staticmethod
    def _prepare_layers(cfg: AuditConfig, extractor: Extractor) -> list[int]:
        if cfg.layers == "all":
            return list(range(extractor.num_layers))
        bad = [i for i in cfg.layers if i >= extractor.num_layers]
        if bad:
            raise ConfigError(f"layers={cfg.layers}: model {cfg.model} has layers 0..{extractor.num_layers - 1}")
        return list(cfg.layers)

    @staticmethod
    def _attack_layer(cfg: AuditConfig, registry: dict[str, AttackFamily], splits: dict[str, Split],
                      store: EmbeddingStore, corpus: Corpus, layer: int, run: RunContext) -> dict:
        view = layer_set(store, corpus, layer)
        attacks, seconds = {}, {}
        for name, split in splits.items():
            wanted = getattr(cfg.settings(name), "frame_layers", None)
            ctx = run.layer(layer, store.frame_rates[layer], frame_skip=None if wanted is None else _DEFERRED)
            t0 = time.perf_counter()
            result = registry[name].attack(view.subset(split.train), view.subset(split.test), cfg.settings(name), ctx)
            attacks[name] = result
            seconds[name] = round(time.perf_counter() - t0, 2)
        return {**store.layer_info(layer), "attacks": attacks, "attack_seconds": seconds}

    @staticmethod
    def _pool_workers(cfg: AuditConfig, splits: dict[str, Split], defense_plan: DefensePlan | None) -> int:
        """``cfg.workers`` when the run has jobs for a pool (a second pass or a defense comparison), else 1."""
        second = any(getattr(cfg.settings(name), key, None) is not None
                     for name in splits for key in ("layers", "frame_layers"))
        return cfg.workers if second or defense_plan is not None else 1

    @staticmethod
    def _second_pass_and_defenses(cfg: AuditConfig, registry: dict[str, AttackFamily], splits: dict[str, Split],
                                  store: EmbeddingStore, corpus: Corpus, layer_results: list[dict], num_layers: int,
                                  run: RunContext, defense_plan: DefensePlan | None, cache: JobCache,
                                  pool: WorkerPool, timeline: RunTimeline) -> list[dict] | None:
        """The second pass's layer jobs and the defense comparison's jobs, queued together; the defense entries.

        Both wait for the first pass's headline layer. Queued as one list (the second pass's
        jobs first, the longest kind first), no worker idles between the two: it takes a
        defense job as soon as it has nothing left of the second pass. A ``[[defense]]`` at
        ``"leakiest"`` is planned on the first pass's leakiest layer; should the frame
        attackers of the second pass move the headline to another layer (or name the first
        one, when the pooled attackers gave none), that layer's comparison runs afterwards and
        any first one is discarded, so the comparison always sits at the report's leakiest
        layer (the timeline shows the extra phase).
        """
        leaky = headline(layer_results).get("leakiest_layer")
        layer_jobs, frame = AuditPipeline._second_pass_jobs(cfg, splits, layer_results, leaky, num_layers)
        moves = defenses_name_leakiest(cfg)
        planned = None
        if defense_plan is not None and (leaky is not None or not moves):
            planned = plan_defense_jobs(defense_plan, cfg, num_layers, leaky)
        jobs = [(attack_one, (job, cfg.settings(job.family), splits[job.family])) for job in layer_jobs]
        labels = [f"{job.family} layer {job.layer}" for job in layer_jobs]
        if planned is not None:
            jobs, labels = jobs + planned.jobs, labels + planned.labels
        with timeline.phase("second pass and defense comparison"):
            done = run_jobs(jobs, families=registry, store=store, corpus=corpus, run=run, workers=cfg.workers,
                            progress=cfg.progress, desc="second pass and defense jobs", cache=cache, pool=pool,
                            labels=labels)
        by_index = {la["index"]: la for la in layer_results}
        for job, (result, seconds) in zip(layer_jobs, done):
            la = by_index[job.layer]
            first = la["attack_seconds"].get(job.family, 0.0) if job in frame else 0.0
            la["attacks"][job.family] = result
            la["attack_seconds"][job.family] = round(first + seconds, 2)
        if defense_plan is None:
            return None
        parts = done[len(layer_jobs):]
        final = headline(layer_results).get("leakiest_layer")
        if planned is None or (moves and final != leaky):
            planned = plan_defense_jobs(defense_plan, cfg, num_layers, final)
            with timeline.phase("defense comparison at the final leakiest layer"):
                parts = run_jobs(planned.jobs, families=registry, store=store, corpus=corpus, run=run,
                                 workers=cfg.workers, progress=cfg.progress, desc="defense jobs", cache=cache,
                                 pool=pool, labels=planned.labels)
        return planned.assemble(parts, cfg)

    @staticmethod
    def _second_pass_jobs(cfg: AuditConfig, splits: dict[str, Split], layer_results: list[dict], leaky: int | None,
                          num_layers: int) -> tuple[list[LayerJob], list[LayerJob]]:
        """The costly attacks' jobs on the layers their settings name (all of them, and the frame attackers').

        * A family whose settings name ``frame_layers`` ran in the first pass without its frame
          attackers. On a chosen layer the whole family reruns with them (its pooled attackers
          are seeded, so they repeat their numbers) and its result replaces the first; elsewhere
          the frame attacker's entry says which layers it ran on.
        * A family whose settings name ``layers`` (inversion) did not run in the first pass; it
          attacks the chosen layers now, and other layers record why it did not run there.

        ``leaky`` is the first pass's headline layer (the pooled attackers'). The notes on the
        layers not chosen are written into ``layer_results`` now. Returns every job, the longest
        kind (``layers``) first, and the frame-attacker jobs among them.
        """
        audited = [la["index"] for la in layer_results]
        selected, frame = [], []
        for name in splits:
            settings = cfg.settings(name)
            key = "layers" if getattr(settings, "layers", None) is not None else "frame_layers"
            wanted = getattr(settings, key, None)
            if wanted is None:
                continue
            chosen = select_layers(wanted, leaky, num_layers, audited)
            where = f"{name}.{key} = {list(wanted)}: layers {', '.join(map(str, chosen)) or 'none'}"
            for la in layer_results:
                if la["index"] in chosen:
                    continue
                if key == "layers":
                    la["attacks"][name] = {"skipped": f"layer not selected ({where})"}
                else:
                    _restate_deferred(la["attacks"][name], f"frame attacker not run on this layer ({where})")
            (selected if key == "layers" else frame).extend(LayerJob(name, i) for i in chosen)
        return selected + frame, frame

    @staticmethod
    def _maps(cfg: AuditConfig, store: EmbeddingStore, corpus: Corpus, summary: dict, out: Path) -> list[dict]:
        """t-SNE maps of pooled embeddings of the most and least leaky layers, by speaker and attribute.

        Returns each map as a figure record (``file``, ``alt``, ``caption``, ``topic``): they are drawn
        from embeddings, so a re-render from results reuses the files.
        """
        if not summary:
            return []
        written = []
        attributes = cfg.settings("attributes")
        for tag, layer in (("most", summary["leakiest_layer"]), ("least", summary["least_leaky_layer"])):
            view = layer_set(store, corpus, layer, pooling="mean")
            rows = np.random.default_rng(cfg.seed).permutation(len(view))[:1500]
            colours = {"speaker": view.speakers[rows]}
            for name in attributes.categorical + attributes.numeric:
                values = view.attributes.get(name)
                if values is not None and any(v is not None for v in values[rows]):
                    colours[name] = values[rows]
            name = f"map_{tag}_leaky_layer{layer}.png"
            plots.embedding_map(out / name, view.pooled[rows], colours, seed=cfg.seed,
                                title=f"{cfg.model} layer {layer} ({tag} leaky): t-SNE of mean-pooled embeddings")
            written.append({"file": name, "topic": "maps",
                            "alt": f"t-SNE maps of {rows.size} mean-pooled utterance embeddings of layer {layer}, the "
                                   f"{tag} leaky layer, one panel per colouring ({', '.join(colours)}): tight "
                                   "single-colour clusters in the speaker panel mean the layer separates speakers.",
                            "caption": f"Layer {layer} ({tag} leaky): embedding map coloured by "
                                       f"{', '.join(colours)}."})
        return written


#: Why a frame attacker skipped a layer in the first pass (restated once its layers are chosen).
_DEFERRED = "frame attacker deferred until its frame_layers are chosen"


def job_cache(store: EmbeddingStore, corpus: Corpus, run: RunContext, registry: dict[str, AttackFamily],
              out: Path) -> JobCache:
    """The run's job cache in the store's folder (:class:`audit.job_cache.JobCache`).

    Keyed by the store, the corpus with its labels, the run settings, the versions and the source.
    """
    labels = hashlib.sha256(repr(canonical(corpus.utterances)).encode()).hexdigest()
    parts = {"store": Path(store.root).name, "corpus": labels,
             **{k: str(v) for k, v in run.settings().items() if k != "progress"},
             **{k: v for k, v in environment().items() if k not in ("platform", "torch_threads")}}
    return JobCache.for_run(Path(store.root).parent, parts, family_modules(registry), out)


def check_writable(out: Path) -> None:
    """Create the report folder and write a probe file there; :class:`ConfigError` naming it when that fails."""
    probe = out / f".write-probe-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"out={str(out)!r}: the report folder cannot be written ({err.strerror or err})") from None


def _restate_deferred(result: dict, note: str) -> None:
    """Replace the first pass's :data:`_DEFERRED` reason of the frame attackers in ``result`` by ``note``."""
    for group in ("attackers", "scorers"):
        for entry in (result.get(group) or {}).values():
            if isinstance(entry, dict) and entry.get("skipped") == _DEFERRED:
                entry["skipped"] = note


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("speech-audit")
    except Exception:
        return "unknown"


__all__ = ["AuditPipeline", "corpus_labels", "prepare_corpus", "run_weakenings", "threat_model"]
