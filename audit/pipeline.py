"""The audit pipeline: corpus -> store -> per-layer attacks -> results.json, summary.md, plots.

:class:`AuditPipeline` has a small public API (``run``); the steps live in ``_prepare_*``
helpers and always produce the same result type, a JSON-ready dict following
:data:`audit.results.SCHEMA_VERSION`.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from attacks import LAYER_ATTACKS, PREFLIGHT
from audit import plots
from audit.config import AuditConfig
from audit.corpus import Corpus, load_corpus
from audit.embeddings import layer_set
from audit.errors import ConfigError
from audit.extractor import Extractor, build_extractor
from audit.report import write_report
from audit.results import SCHEMA_VERSION
from audit.store import EmbeddingStore

THREAT_MODEL = (
    "The attacker holds the audited layer's embeddings (frame-level sequences or per-utterance "
    "averages) and a labelled side corpus of its own, and trains on it; every attacker is evaluated on "
    "held-out data. (1) Closed-set identification: the side corpus has other utterances of the same "
    "people; the attacker names the speaker of a new utterance. (2) Open-set verification/linkage: the "
    "attacker learns from other people and decides whether two utterances of unseen people come from "
    "the same person (EER, minDCF, linkability). (3) Attribute inference: from other people's labelled "
    "embeddings the attacker infers gender and speaking rate of unseen people. Leakage above chance "
    "means the embeddings identify or describe people; they are not anonymous."
)


def environment() -> dict:
    """Versions that determine the numbers (for reproduction)."""
    import sklearn
    import torch
    import transformers

    return {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
            "transformers": transformers.__version__, "scikit-learn": sklearn.__version__,
            "numpy": np.__version__, "torch_threads": torch.get_num_threads()}


class AuditPipeline:
    """Run one audit from an :class:`AuditConfig`; ``run()`` returns the results dict."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = config

    def run(self) -> dict:
        """Extract (or reuse) embeddings, attack every selected layer, write the report."""
        cfg = self.config.validate().effective()
        t0 = time.perf_counter()
        out = Path(cfg.out or Path("reports") / cfg.run_name())
        corpus = self._prepare_corpus(cfg)
        extractor = build_extractor(cfg.model)
        layers = self._prepare_layers(cfg, extractor)
        for name in cfg.attacks:
            if name in PREFLIGHT:
                PREFLIGHT[name](getattr(cfg, name), seed=cfg.seed)
        out.mkdir(parents=True, exist_ok=True)
        store = EmbeddingStore.build(extractor, corpus, cache_dir=cfg.cache_dir, batch_size=cfg.batch_size,
                                     progress=cfg.progress)
        # Small dense problems: multi-threaded BLAS only adds synchronisation cost (measured 20x slower
        # logistic regression with 2 threads on a busy 2-core machine), so attackers run on one BLAS thread.
        with threadpool_limits(limits=1, user_api="blas"):
            layer_results = [self._attack_layer(cfg, store, corpus, layer, out)
                             for layer in tqdm(layers, desc="attack layers", disable=not cfg.progress)]
        results = {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "speech-audit", "version": _version()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": asdict(cfg),
            "environment": environment(),
            "model": {**extractor.describe(), "fingerprint": extractor.fingerprint()},
            "corpus": {"spec": cfg.corpus, "description": corpus.describe(), "n_utterances": len(corpus),
                       "n_speakers": len(set(corpus.speakers)), "total_seconds": round(corpus.total_seconds, 2),
                       "filters": list(corpus.filters), "segment_seconds": corpus.segment_seconds,
                       "fingerprint": corpus.fingerprint()},
            "store": {"path": str(store.root), "cache_hit": store.stats.cache_hit,
                      "shards_computed": store.stats.shards_computed,
                      "model_seconds": round(store.stats.model_seconds, 2),
                      "audio_seconds": round(store.stats.audio_seconds, 2),
                      "wall_seconds": round(store.stats.wall_seconds, 2)},
            "threat_model": THREAT_MODEL,
            "weakened": cfg.weakening_settings(),
            "layers": layer_results,
        }
        results["summary"] = _summary(layer_results)
        results["files"] = ["results.json", "summary.md"] + self._maps(cfg, store, corpus, results["summary"], out)
        results["wall_seconds"] = round(time.perf_counter() - t0, 2)
        write_report(results, out)
        results["out"] = str(out)
        return results

    @staticmethod
    def _prepare_corpus(cfg: AuditConfig) -> Corpus:
        corpus = load_corpus(cfg.corpus, seed=cfg.seed, progress=cfg.progress)
        if cfg.where:
            corpus = corpus.where(cfg.where)
        if cfg.segment:
            corpus = corpus.segmented(cfg.segment)
        return corpus

    @staticmethod
    def _prepare_layers(cfg: AuditConfig, extractor: Extractor) -> list[int]:
        if cfg.layers == "all":
            return list(range(extractor.num_layers))
        bad = [i for i in cfg.layers if i >= extractor.num_layers]
        if bad:
            raise ConfigError(f"layers={cfg.layers}: model {cfg.model} has layers 0..{extractor.num_layers - 1}")
        return list(cfg.layers)

    @staticmethod
    def _attack_layer(cfg: AuditConfig, store: EmbeddingStore, corpus: Corpus, layer: int, out: Path) -> dict:
        view = layer_set(store, corpus, layer)
        rate = store.frame_rates[layer]
        attacks, seconds = {}, {}
        for name in cfg.attacks:
            t0 = time.perf_counter()
            attacks[name] = LAYER_ATTACKS[name](view, getattr(cfg, name), seed=cfg.seed, frame_rate=rate, out_dir=out)
            seconds[name] = round(time.perf_counter() - t0, 2)
        return {**store.layer_info(layer), "attacks": attacks, "attack_seconds": seconds}

    @staticmethod
    def _maps(cfg: AuditConfig, store: EmbeddingStore, corpus: Corpus, summary: dict, out: Path) -> list[str]:
        """t-SNE maps of pooled embeddings of the most and least leaky layers, by speaker and attribute."""
        if not summary:
            return []
        written = []
        for tag, layer in (("most", summary["leakiest_layer"]), ("least", summary["least_leaky_layer"])):
            view = layer_set(store, corpus, layer, pooling="mean")
            rows = np.random.default_rng(cfg.seed).permutation(len(view))[:1500]
            colours = {"speaker": view.speakers[rows]}
            for name in cfg.attributes.categorical + cfg.attributes.numeric:
                values = view.attributes.get(name)
                if values is not None and any(v is not None for v in values[rows]):
                    colours[name] = values[rows]
            name = f"map_{tag}_leaky_layer{layer}.png"
            plots.embedding_map(out / name, view.pooled[rows], colours, seed=cfg.seed,
                                title=f"{cfg.model} layer {layer} ({tag} leaky): t-SNE of mean-pooled embeddings")
            written.append(name)
        return written


def _summary(layers: list[dict]) -> dict:
    """Most and least leaky layer by speaker-ID top-1, or by verification EER when speaker ID was not run."""
    scored = [(la["attacks"]["speaker_id"]["top1"], la) for la in layers
              if "top1" in (la["attacks"].get("speaker_id") or {})]
    if scored:
        top1, worst = max(scored, key=lambda t: t[0])
        low, best = min(scored, key=lambda t: t[0])
        sid = worst["attacks"]["speaker_id"]
        return {"measure": "speaker_id_top1", "leakiest_layer": worst["index"], "leakiest_top1": top1,
                "leakiest_ci95": sid["ci95"], "leakiest_attacker": sid["attacker"], "chance": sid["chance"],
                "least_leaky_layer": best["index"], "least_leaky_top1": low}
    scored = [(la["attacks"]["verification"]["eer"], la) for la in layers
              if "eer" in (la["attacks"].get("verification") or {})]
    if scored:
        eer, worst = min(scored, key=lambda t: t[0])
        high, best = max(scored, key=lambda t: t[0])
        return {"measure": "verification_eer", "leakiest_layer": worst["index"], "leakiest_eer": eer,
                "leakiest_ci95": worst["attacks"]["verification"]["ci95"], "least_leaky_layer": best["index"],
                "least_leaky_eer": high}
    return {}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("speech-audit")
    except Exception:
        return "unknown"


__all__ = ["AuditPipeline", "THREAT_MODEL"]
