"""The defense comparison: fit each defense on the owner's speakers, attack and probe the rest.

A defense is the model owner's transform, trained once on the owner's data and applied to
people it never saw. So the corpus is split by speaker into a *defense partition* (the owner's
speakers: every defense is fitted there) and an *evaluation partition* (everyone else: the
attack families and the utility probe run there with their usual splits). Everything that can
be decided from labels (partition, splits, utility task, feasibility) is planned before
extraction by :func:`plan_defenses`; once the layers are attacked, :func:`plan_defense_jobs`
turns it into jobs (:mod:`audit.jobs`) that measure every defense setting on every layer it
names, under three attacker scenarios (VoicePrivacy's):

* ``ignorant``: attackers trained on undefended embeddings, tested on defended ones (a family
  with enrolment data, verification, enrols on undefended speech);
* ``lazy_informed``: families with enrolment only: scorer trained on undefended embeddings,
  enrolment and trials both defended;
* ``semi_informed``: every attacker retrained from scratch on defended embeddings, with the
  attack suite's own budgets and validation.

A defense is judged by the strongest scenario. The undefended reference on the same partition
is the entry ``name = "none"``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from audit.config import AuditConfig, DefenseSpec
from audit.defense import DefenseContext, DefenseFailed, DefenseFamily
from audit.defense_tables import setting_label
from audit.embeddings import EmbeddingSet, layer_set
from audit.errors import ConfigError, CorpusError
from audit.family import AttackFamily, RunContext, plan_splits
from audit.measures import strongest_figure
from audit.splits import Split, speaker_disjoint_split
from audit.store import EmbeddingStore
from audit.utility import (RetainedAboveChance, UtilityScore, UtilityTask, measure_utility, resolve_task, retained,
                           retained_above_chance, utility_split)
from defenses import load_defenses

#: Fewest speakers a defense partition may have (an adversary and LEACE need several classes).
MIN_DEFENSE_SPEAKERS = 2


@dataclass
class DefensePlan:
    """Everything about a defense comparison that labels decide, made before extraction.

    Row indices in ``fit_rows`` and ``eval_rows`` index the corpus; ``splits`` (per attack
    family) and ``utility_split`` index the evaluation partition.
    """

    fit_rows: np.ndarray
    eval_rows: np.ndarray
    fit_on: str
    task: UtilityTask | None
    utility_split: Any
    splits: dict[str, Split]
    infeasible: dict[str, str]
    settings: list[tuple[DefenseSpec, dict[str, Any], Any]] = field(default_factory=list)
    utility_note: str | None = None

    def describe(self, labels: EmbeddingSet) -> dict:
        """JSON-ready partition sizes, splits and which families could not run on the evaluated speakers."""
        return {"fit_on": self.fit_on,
                "defense_partition": {"n_speakers": int(np.unique(labels.speakers[self.fit_rows]).size),
                                      "n_utterances": int(self.fit_rows.size)},
                "evaluation_partition": {"n_speakers": int(np.unique(labels.speakers[self.eval_rows]).size),
                                         "n_utterances": int(self.eval_rows.size)},
                "speakers_disjoint": self.fit_on == "disjoint",
                "utility_task": None if self.task is None else self.task.name,
                "utility_note": self.utility_note,
                "utility_split": None if self.utility_split is None else self.utility_split.describe(),
                "splits": {name: split.describe() for name, split in self.splits.items()},
                "families_not_measurable": dict(self.infeasible)}


def plan_defenses(cfg: AuditConfig, families: dict[str, AttackFamily], labels: EmbeddingSet) -> DefensePlan | None:
    """The defense comparison's partition, splits and settings, or None when the config names no defense.

    Raises :class:`ConfigError` naming the key when the defense partition is too small, the
    utility task cannot be supported by the corpus, or no attack family can run on the
    evaluated speakers.
    """
    if not cfg.defenses:
        return None
    try:
        part = speaker_disjoint_split(labels.speakers, test_fraction=1 - cfg.defense_fraction, seed=cfg.seed)
    except CorpusError as err:
        raise ConfigError(f"defense_fraction={cfg.defense_fraction}: cannot split the speakers into a defense "
                          f"and an evaluation partition: {err}") from err
    n_fit = int(np.unique(labels.speakers[part.train]).size)
    if n_fit < MIN_DEFENSE_SPEAKERS or part.test.size == 0:
        raise ConfigError(f"defense_fraction={cfg.defense_fraction}: the defense partition has {n_fit} speakers "
                          f"(need >= {MIN_DEFENSE_SPEAKERS}) and the evaluation partition "
                          f"{int(np.unique(labels.speakers[part.test]).size)}; use a corpus with more speakers")
    eval_rows = np.sort(part.test)
    fit_rows = np.sort(part.train) if cfg.defense_fit_on == "disjoint" else eval_rows
    evaluated = labels.subset(eval_rows)
    task, note = _plan_task(cfg, labels)
    usplit = None
    if task is not None:
        try:
            usplit = utility_split(evaluated, task, cfg.utility_probe, cfg.seed)
        except CorpusError as err:
            raise ConfigError(f"utility={task.name!r}: cannot split the evaluated speakers for the probe: "
                              f"{err}") from err
    attacks = cfg.attacks if cfg.defense_attacks is None else cfg.defense_attacks
    splits, infeasible = plan_splits({n: families[n] for n in attacks}, cfg.settings, evaluated, cfg.seed)
    for name, reason in infeasible.items():
        warnings.warn(f"defense comparison: attack family {name!r} cannot run on the evaluated speakers: {reason}",
                      stacklevel=2)
    if not splits:
        raise ConfigError("defense: no attack family can run on the evaluation partition ("
                          + "; ".join(f"{n}: {r}" for n, r in infeasible.items()) + "); lower defense_fraction "
                          "or use a corpus with more speakers")
    registry = load_defenses()
    settings = [(spec, params, spec.settings(registry[spec.name], params, f"defense[{i}]."))
                for i, spec in enumerate(cfg.defenses) for params in spec.grid()]
    return DefensePlan(fit_rows, eval_rows, cfg.defense_fit_on, task, usplit, splits, infeasible, settings, note)


def _plan_task(cfg: AuditConfig, labels: EmbeddingSet) -> tuple[UtilityTask | None, str | None]:
    """The utility task, checked against the corpus; ``auto`` without transcripts means none, said in a note."""
    task = resolve_task(cfg.utility, labels)
    if task is None:
        note = ("utility not measured: utility='none'" if cfg.utility == "none" else
                "utility not measured: the corpus lacks transcripts for the ctc probe; set utility = "
                "'classification:COLUMN' to probe a label column")
        warnings.warn(f"defense comparison: {note}", stacklevel=2)
        return None, note
    reason = task.feasibility(labels)
    if reason is not None:
        raise ConfigError(f"utility={cfg.utility!r}: {reason}")
    return task, None


def defended_layers(cfg_layers: list[int | str], leakiest: int | None, last: int) -> list[int]:
    """Layer indices a ``[[defense]]`` table names, with ``leakiest`` and ``last`` resolved, in order, once each."""
    out: list[int] = []
    for layer in cfg_layers:
        index = leakiest if layer == "leakiest" else last if layer == "last" else int(layer)
        if index is None:
            raise ConfigError("defense layers: 'leakiest' needs an attacked layer with a leakage figure")
        if index not in out:
            out.append(index)
    return out


def check_defense_layers(cfg: AuditConfig, num_layers: int) -> None:
    """Raise :class:`ConfigError` naming the table whose ``layers`` name a layer the model lacks (before extraction)."""
    for i, spec in enumerate(cfg.defenses):
        bad = [la for la in spec.layers if isinstance(la, int) and la >= num_layers]
        if bad:
            raise ConfigError(f"defense[{i}].layers: {bad} out of range (the model has layers 0..{num_layers - 1})")


@dataclass
class DefenseJobs:
    """The defense comparison as :mod:`audit.jobs` jobs, on the layers :func:`plan_defense_jobs` resolved.

    Per layer, one job trains every attacker on undefended embeddings once (the reference and
    every setting's ignorant and lazy-informed scenarios), then one job per setting fits the
    defense, retrains every attacker on defended embeddings (semi-informed) and probes
    utility. The run may queue these behind other jobs (:meth:`assemble` only needs their
    results in this order).
    """

    layers: list[int]
    named: dict[int, list[int]]
    jobs: list[tuple[Any, tuple]]
    labels: list[str]

    def assemble(self, parts: list[Any], cfg: AuditConfig) -> list[dict]:
        """The comparison's entries, each layer's undefended reference first, from the jobs' results in order."""
        if len(parts) != len(self.jobs):
            raise ValueError(f"DefenseJobs.assemble: {len(parts)} results for {len(self.jobs)} jobs")
        found, entries = iter(parts), []
        for la in self.layers:
            reference, undefended_utility, undefended_scenarios = next(found)
            entries.append(reference)
            for k in self.named[la]:
                entries.append(_merge(next(found), undefended_scenarios[k], undefended_utility, cfg))
        return entries


def plan_defense_jobs(plan: DefensePlan, cfg: AuditConfig, num_layers: int, leakiest: int | None) -> DefenseJobs:
    """Every defense setting on every layer it names (``"leakiest"`` resolved to ``leakiest``), as jobs."""
    spec_layers = [defended_layers(spec.layers, leakiest, num_layers - 1) for spec in cfg.defenses]
    layers = list(dict.fromkeys(la for named in spec_layers for la in named))
    named = {la: [k for k, (spec, _, _) in enumerate(plan.settings) if la in spec_layers[cfg.defenses.index(spec)]]
             for la in layers}
    jobs: list[tuple[Any, tuple]] = []
    labels: list[str] = []
    for la in layers:
        jobs.append((_undefended_part, (plan, cfg, la, named[la])))
        labels.append(f"defense layer {la}: undefended attackers")
        for k in named[la]:
            jobs.append((_retrained_part, (plan, cfg, la, k)))
            spec, params, _ = plan.settings[k]
            labels.append(f"defense layer {la}: {setting_label({'name': spec.name, 'params': params})}")
    return DefenseJobs(layers, named, jobs, labels)


def defenses_name_leakiest(cfg: AuditConfig) -> bool:
    """Whether a ``[[defense]]`` table's ``layers`` name ``"leakiest"`` (known only once layers are attacked).

    Jobs planned on an earlier guess of that layer must then be planned again once it is known.
    """
    return any("leakiest" in spec.layers for spec in cfg.defenses)


def _one_thread() -> Any:
    """Every thread pool (BLAS, OpenMP: k-means, LEACE's linear algebra) at one thread, here as in a worker.

    A comparison job's problems are small: on a 2-core machine one thread ran them 3-8x faster.
    """
    return threadpool_limits(limits=1)


def _undefended_part(families: dict[str, AttackFamily], store: EmbeddingStore, corpus: Any, run: RunContext,
                     plan: DefensePlan, cfg: AuditConfig, layer: int,
                     settings: list[int]) -> tuple[dict, UtilityScore | None, dict[int, dict]]:
    """A layer's reference entry, its utility score, and each setting's ignorant and lazy-informed scenarios."""
    with _one_thread():
        comparison = _LayerComparison(plan, cfg, families, layer_set(store, corpus, layer),
                                      run.layer(layer, store.frame_rates[layer]))
        registry = load_defenses()
        reference = comparison.reference()
        scenarios = {k: comparison.undefended_trained(registry[plan.settings[k][0].name], *plan.settings[k][1:])
                     for k in settings}
    return reference, comparison.undefended_utility, scenarios


def _retrained_part(families: dict[str, AttackFamily], store: EmbeddingStore, corpus: Any, run: RunContext,
                    plan: DefensePlan, cfg: AuditConfig, layer: int, setting: int) -> tuple[dict, UtilityScore | None]:
    """One setting's entry without its undefended-trained scenarios, and its utility score."""
    with _one_thread():
        comparison = _LayerComparison(plan, cfg, families, layer_set(store, corpus, layer),
                                      run.layer(layer, store.frame_rates[layer]))
        spec, params, settings = plan.settings[setting]
        return comparison.defended(load_defenses()[spec.name], params, settings)


def _merge(part: tuple[dict, UtilityScore | None], undefended: dict, undefended_utility: UtilityScore | None,
           cfg: AuditConfig) -> dict:
    """One setting's entry: its retrained part with the undefended-trained scenarios first, strongest, utility kept."""
    entry, score = part
    if entry["status"] != "ok":
        return entry
    if undefended["scenarios"] and undefended.get("defended_sha256") != entry.get("defended_sha256"):
        note = ("the ignorant and lazy-informed attackers met a refit of this defense whose output differs from "
                "the one the semi-informed attackers retrained on (the defense's fit is not deterministic)")
        warnings.warn(f"defense {entry['name']} {entry['params']}: {note}", stacklevel=2)
        entry["scenario_note"] = note
    entry["scenarios"] = {**undefended["scenarios"], **entry["scenarios"]}
    entry["attack_seconds"] = {**undefended["attack_seconds"], **entry["attack_seconds"]}
    entry["strongest"] = strongest(entry["scenarios"])
    entry["wall_seconds"] = round(entry["wall_seconds"] + undefended["wall_seconds"], 2)
    entry["utility"] = None
    if score is not None and undefended_utility is not None:
        value, ci = retained(score, undefended_utility, n_boot=cfg.utility_probe.n_boot, seed=cfg.seed)
        entry["utility"] = _utility_entry(score, undefended_utility, value, ci)
    return entry


def _utility_entry(score: UtilityScore, ref: UtilityScore | None, value: float | None, ci: list | None) -> dict:
    """A utility score with the undefended score, the share retained, and the share above chance retained.

    ``retained`` / ``retained_ci95`` are the raw ratio given; ``retained_above_chance`` (with
    ``_ci95``, ``_reason``), ``utility_chance`` and ``utility_chance_basis`` come from
    :func:`audit.utility.retained_above_chance`, paired on the bootstrap settings of ``ref``'s
    CIs (the config's ``utility_probe.n_boot`` and seed, as the raw ratio's). The reference
    itself (``score is ref``) keeps its 1 without a CI, like the raw ratio.
    """
    if ref is None:
        above = RetainedAboveChance(None, None, "no undefended utility score to compare with").to_dict()
    else:
        above = retained_above_chance(score, ref, n_boot=ref.n_boot, seed=ref.seed).to_dict()
        if score is ref:
            above["retained_above_chance_ci95"] = None
    return {**score.to_dict(), "undefended": None if ref is None else ref.value,
            "undefended_ci95": None if ref is None else ref.ci95, "retained": value, "retained_ci95": ci, **above}


class _LayerComparison:
    """One layer's comparison: the undefended reference and each defense setting's parts.

    The run context keeps what parts share in one process: attackers trained on undefended
    embeddings (:meth:`audit.family.RunContext.fitted`) and each fitted defense.
    """

    def __init__(self, plan: DefensePlan, cfg: AuditConfig, families: dict[str, AttackFamily], view: EmbeddingSet,
                 ctx: Any) -> None:
        self.plan, self.cfg, self.ctx = plan, cfg, ctx
        self.families = {name: families[name] for name in plan.splits}
        self.clean = view.subset(plan.eval_rows)
        self.fit_view = view.subset(plan.fit_rows)
        self.undefended_utility: UtilityScore | None = None

    def reference(self) -> dict:
        """The entry ``name = "none"``: every family and the utility probe on undefended embeddings."""
        t0 = time.perf_counter()
        attacks, seconds = self._attacks(self.clean, self.clean)
        self.undefended_utility = self._utility(self.clean)
        utility = None
        if self.undefended_utility is not None:
            utility = _utility_entry(self.undefended_utility, self.undefended_utility, 1.0, None)
        return {"name": "none", "params": {}, "layer": self.ctx.index, "status": "ok",
                "fit": None, "scenarios": {"semi_informed": attacks},
                "attack_seconds": {"semi_informed": seconds},
                "strongest": strongest({"semi_informed": attacks}, self.families), "utility": utility,
                "wall_seconds": round(time.perf_counter() - t0, 2)}

    def _fit_defense(self, family: DefenseFamily, params: dict,
                     settings: Any) -> tuple[Any, EmbeddingSet | None, Exception | None]:
        """The fitted defense and the defended evaluation set (or the error), once per process."""
        def fit() -> tuple[Any, EmbeddingSet | None, Exception | None]:
            defense = family.build(settings, DefenseContext(seed=self.cfg.seed, utility=self.plan.task,
                                                            frame_rate=self.ctx.frame_rate,
                                                            progress=self.cfg.progress, device=self.ctx.device))
            try:
                with np.errstate(all="ignore"):
                    defense.fit(self.fit_view)
                    return defense, defense.transform(self.clean), None
            except (DefenseFailed, ValueError, FloatingPointError, np.linalg.LinAlgError, RuntimeError) as err:
                return defense, None, err

        return self.ctx.run.once(("defense", self.ctx.index, family.name, repr(params), repr(settings)), fit)

    def undefended_trained(self, family: DefenseFamily, params: dict, settings: Any) -> dict:
        """One setting's ignorant and lazy-informed scenarios: attackers trained on undefended embeddings.

        A defense that keeps the frame dimension but pools to another one (k-means: centroid
        frames, a unit histogram) still releases frames the undefended attackers can read: they
        get the defended frames, pooled mean+std as the store pools, and each result says so in
        ``defended_input``. Only a defense that changes the frame dimension is ``not_applicable``.
        """
        from audit.defense import meanstd_pool

        t0 = time.perf_counter()
        wanted = [name for name in ("ignorant", "lazy_informed") if name in self.cfg.defense_scenarios]
        if not wanted:
            return {"scenarios": {}, "attack_seconds": {}, "wall_seconds": 0.0}
        _, defended, err = self._fit_defense(family, params, settings)
        if defended is None:
            return {"scenarios": {}, "attack_seconds": {}, "wall_seconds": 0.0, "error": f"{type(err).__name__}: {err}"}
        scenarios, seconds = {}, {}
        clean_dims, dims = (self.clean.frames(0).shape[1], self.clean.pooled.shape[1]), (
            defended.frames(0).shape[1], defended.pooled.shape[1])
        readable, note = defended, None
        if dims[0] == clean_dims[0] and dims[1] != clean_dims[1] and clean_dims[1] == 2 * clean_dims[0]:
            pooled = np.stack([meanstd_pool(defended.frames(i)) for i in range(len(defended))])
            readable = defended.with_pooled(pooled, keep_frames=True)
            note = (f"the defense's own pooled vector has another dimension ({clean_dims[1]} -> {dims[1]}); "
                    "the attackers read its frames, pooled mean+std as the store pools")
        for name in wanted:
            if readable.pooled.shape[1] != clean_dims[1] or dims[0] != clean_dims[0]:
                scenarios[name] = {"not_applicable": (
                    f"the defense changes the dimension ({clean_dims[1]} -> {dims[1]} pooled, {clean_dims[0]} -> "
                    f"{dims[0]} per frame): an attacker trained on undefended embeddings cannot read defended ones")}
            else:
                scenarios[name], seconds[name] = self._attacks(self.clean, readable, ignorant=name == "ignorant",
                                                               only_enrolment=name == "lazy_informed")
                if note:
                    for result in scenarios[name].values():
                        result["defended_input"] = note
        return {"scenarios": scenarios, "attack_seconds": seconds, "defended_sha256": defended.fingerprint(),
                "wall_seconds": round(time.perf_counter() - t0, 2)}

    def defended(self, family: DefenseFamily, params: dict, settings: Any) -> tuple[dict, UtilityScore | None]:
        """One setting's retrained part: fit on the defense partition, transform, retrain every attacker, probe.

        Returns the entry (its ``scenarios`` hold ``semi_informed`` only) and the utility score.
        """
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"name": family.name, "params": params, "layer": self.ctx.index}
        defense, defended, err = self._fit_defense(family, params, settings)
        if defended is None:
            warnings.warn(f"defense {family.name} {params}: failed: {err}", stacklevel=2)
            return {**entry, "status": "failed", "reason": f"{type(err).__name__}: {err}",
                    "history": getattr(defense, "history_", None),
                    "wall_seconds": round(time.perf_counter() - t0, 2)}, None
        entry["status"] = "ok"
        entry["fit"] = {**defense.fit_info_, "loss_history": defense.history_, **defense.report()}
        if "training_adversary" in entry["fit"]:
            entry["training_adversary"] = entry["fit"].pop("training_adversary")
        entry["dims"] = {"frames": int(defended.frames(0).shape[1]), "pooled": int(defended.pooled.shape[1])}
        entry["defended_sha256"] = defended.fingerprint()
        attacks, seconds = self._attacks(defended, defended)
        entry["scenarios"], entry["attack_seconds"] = {"semi_informed": attacks}, {"semi_informed": seconds}
        score = self._utility(defended)
        entry["wall_seconds"] = round(time.perf_counter() - t0, 2)
        return entry, score

    def _attacks(self, train_view: EmbeddingSet, test_view: EmbeddingSet, *, ignorant: bool = False,
                 only_enrolment: bool = False) -> tuple[dict, dict]:
        """Each family's attack and its seconds: fitted on ``train_view``'s train rows, tested on ``test_view``'s."""
        out, seconds = {}, {}
        for name, family in self.families.items():
            if only_enrolment and family.enrolment_test is None:
                continue
            split, settings = self.plan.splits[name], self.cfg.settings(name)
            train, test = train_view.subset(split.train), test_view.subset(split.test)
            if ignorant and family.enrolment_test is not None:
                test = family.enrolment_test(self.clean.subset(split.test), test, settings, self.ctx.seed)
            t0 = time.perf_counter()
            try:
                result = family.attack(train, test, settings, self.ctx)
            except (CorpusError, ValueError, np.linalg.LinAlgError) as err:
                result = {"skipped": f"failed: {type(err).__name__}: {err}"}
            seconds[name] = round(time.perf_counter() - t0, 2)
            out[name] = result
        return out, seconds

    def _utility(self, view: EmbeddingSet) -> UtilityScore | None:
        if self.plan.task is None or (self.plan.task.kind == "ctc" and view.frame_source is None):
            return None
        split = self.plan.utility_split
        return measure_utility(self.plan.task, view.subset(split.train), view.subset(split.test),
                               self.cfg.utility_probe, self.cfg.seed, self.ctx.device)


#: A defense entry's ``strongest`` figures: (key, attack family, the family's declared measure).
STRONGEST = (("top1", "speaker_id", "top1"), ("eer", "verification", "eer"))


def strongest(scenarios: dict, families: dict[str, AttackFamily] | None = None) -> dict:
    """The strongest scenario's closed-set top-1 (highest) and open-set EER (lowest), each with its CI and chance.

    Each figure is :func:`audit.measures.strongest_figure` of the family's declared measure: a
    scenario whose attack failed or was skipped is listed under ``missing_scenarios``, never
    silently dropped. ``families`` is the attack registry (default: the installed one).
    """
    if families is None:
        from attacks import load_families

        families = load_families()
    best: dict[str, Any] = {}
    for key, family, path in STRONGEST:
        measure = families[family].metric(path) if family in families else None
        figure = strongest_figure(scenarios, family, path, measure) if measure is not None else None
        if figure is not None:
            best[key] = figure
    if "top1" in best:
        best["scenario"] = best["top1"]["scenario"]
    elif "eer" in best:
        best["scenario"] = best["eer"]["scenario"]
    return best


__all__ = ["DefenseJobs", "DefensePlan", "check_defense_layers", "defended_layers", "defenses_name_leakiest",
           "plan_defense_jobs", "plan_defenses", "strongest"]
