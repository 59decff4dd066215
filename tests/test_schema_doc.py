"""``reports/SCHEMA.md`` describes the results a run writes, and cannot drift from them.

One small real audit (tiny random wav2vec2: every attack family, frame attackers, inversion, a
defense comparison with a failing setting, a policy) writes ``results.json``; every key path in
it must be documented in SCHEMA.md, the doc's table of gate measures must equal the one
generated from the registries, and the doc must state the current schema version.

How an observed path is matched against the doc (the normalisation rule, also stated in the
doc's "Notation" section):

* a path is the list of keys from the top; a list's elements are one ``[]`` segment
  (``layers[].attacks``), so every element is checked against the same documented keys;
* the doc writes keys that are ids, names or values (attackers, attributes, headline labels,
  parameters, C values) as ``<placeholder>`` segments, which match any one key; ``<family>``
  matches only a registered attack family and ``<scenario>`` only a defense scenario;
* ``{a,b}`` in a documented path stands for each alternative;
* a documented ``X`` "is laid out as" ``Y`` reads every path below ``X`` as the same path below
  ``Y`` (a defense scenario's family results are laid out as a layer's);
* a leaf (number, string, bool, null, list of plain values) must be documented itself; an empty
  object or list is documented when anything below its path is.
"""

from __future__ import annotations

import itertools
import json
import re
import warnings
from pathlib import Path

import pytest

from attacks import load_families
from audit.cli import main
from audit.config import SCENARIOS
from audit.defense_tables import DEFENSE_METRICS
from audit.measures import Measure
from audit.results import SCHEMA_VERSION
from tests.conftest import write_tone_corpus

SCHEMA_MD = Path(__file__).resolve().parents[1] / "reports" / "SCHEMA.md"
MEASURES_BEGIN, MEASURES_END = "<!-- measures:begin -->", "<!-- measures:end -->"


# --- the doc: documented paths and layouts ------------------------------------------------------------


def expand(path: str) -> list[str]:
    """Every path ``{a,b}`` alternatives in ``path`` stand for (``x.{a,b}.y`` -> ``x.a.y``, ``x.b.y``)."""
    parts = re.split(r"(\{[^{}]*\})", path)
    options = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
    return ["".join(choice) for choice in itertools.product(*options)]


def segments(path: str) -> tuple[str, ...]:
    """``a.b[].c`` -> ``("a", "b", "[]", "c")`` (the empty path has no segments)."""
    out: list[str] = []
    for part in path.split(".") if path else []:
        key, lists = part, 0
        while key.endswith("[]"):
            key, lists = key[:-2], lists + 1
        out += ([key] if key else []) + ["[]"] * lists
    return tuple(out)


def documented_paths(text: str) -> set[tuple[str, ...]]:
    """Paths SCHEMA.md documents: each ``| key |`` table row's key below every path its section heading names.

    A heading's backticked spans are the section's prefixes (none: the top level); a row's first
    cell is a backticked path relative to each prefix.
    """
    found: set[tuple[str, ...]] = set()
    prefixes = [""]
    in_table = False
    for line in text.splitlines():
        if line.startswith("#"):
            prefixes = re.findall(r"`([^`]+)`", line) or [""]
            in_table = False
        elif re.match(r"^\|\s*key\s*\|", line):
            in_table = True
        elif in_table and line.startswith("|"):
            cell = line.split("|")[1].strip()
            for rel in re.findall(r"`([^`]+)`", cell):
                for prefix in prefixes:
                    for full in expand(f"{prefix}.{rel}" if prefix else rel):
                        found.add(segments(full))
        elif not line.startswith("|"):
            in_table = False
    return found


def layouts(text: str) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """``(X, Y)`` for each "- `X` is laid out as `Y`" line of SCHEMA.md."""
    return [(segments(a), segments(b)) for a, b in re.findall(r"^- `([^`]+)` is laid out as `([^`]+)`", text, re.M)]


def vocabulary() -> dict[str, set[str]]:
    """Placeholders that match only known keys."""
    return {"<family>": set(load_families()), "<scenario>": set(SCENARIOS)}


def _segment_matches(doc: str, key: str, vocab: dict[str, set[str]]) -> bool:
    """``key`` is ``doc``, or an instance of its ``<placeholder>`` (with a fixed suffix: ``<attribute>_cca``)."""
    if doc == key:
        return True
    found = re.fullmatch(r"(<[^<>]+>)(.*)", doc)
    if not found or key == "[]":
        return False
    placeholder, suffix = found.groups()
    if not key.endswith(suffix) or len(key) == len(suffix):
        return False
    name = key[:len(key) - len(suffix)] if suffix else key
    return placeholder not in vocab or name in vocab[placeholder] or name == placeholder


def _matches(doc: tuple[str, ...], path: tuple[str, ...], vocab: dict[str, set[str]]) -> bool:
    return len(doc) == len(path) and all(_segment_matches(d, p, vocab) for d, p in zip(doc, path))


class Schema:
    """The paths and layouts SCHEMA.md documents, and the rule for when an observed path is documented."""

    def __init__(self, text: str) -> None:
        self.paths = documented_paths(text)
        self.layouts = layouts(text)
        self.vocab = vocabulary()
        self._by_length: dict[int, set[tuple[str, ...]]] = {}
        for doc in self.paths:  # each documented path and its prefixes (for empty containers), by length
            for n in range(1, len(doc) + 1):
                self._by_length.setdefault(n, set()).add(doc[:n] + (("",) if n < len(doc) else ()))

    def documents(self, path: tuple[str, ...], *, container: bool = False, depth: int = 0) -> bool:
        """True when ``path`` (a leaf, or an empty ``container``) is documented, directly or through a layout."""
        for doc in self._by_length.get(len(path), ()):
            if (doc[-1] != "" or container) and _matches(doc[:len(path)], path, self.vocab):
                return True
        if depth < 3:
            for source, target in self.layouts:
                n = len(source)
                if len(path) > n and _matches(source, path[:n], self.vocab):
                    if self.documents(target + path[n:], container=container, depth=depth + 1):
                        return True
        return False


# --- results.json: every key path -----------------------------------------------------------------------


def key_paths(node, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], bool]]:
    """``(path, is_empty_container)`` of every leaf below ``node``: dicts walked by key, lists of objects by ``[]``."""
    if isinstance(node, dict):
        if not node:
            return [(path, True)]
        return [p for key, value in node.items() for p in key_paths(value, path + (str(key),))]
    if isinstance(node, list):
        if not node:
            return [(path, True)]
        if any(isinstance(v, dict) for v in node):
            return [p for v in node for p in key_paths(v, path + ("[]",))]
    return [(path, False)]


def undocumented(results: dict, schema: Schema) -> list[str]:
    """Every key path of ``results`` that SCHEMA.md does not document, sorted, each once."""
    missing = {".".join(p).replace(".[]", "[]") for p, empty in set(key_paths(results))
               if not schema.documents(p, container=empty)}
    return sorted(missing)


# --- the measures table ---------------------------------------------------------------------------------


MEASURE_COLUMNS = ["measure", "direction", "unit", "range", "CI key", "chance", "risk bands", "headline", "meaning"]


def _direction(m: Measure) -> str:
    if m.is_leakage:
        return "higher is leakier" if m.higher_is_leakier else "lower is leakier"
    return "higher is better" if m.higher_is_better else "lower is better"


def _chance(m: Measure) -> str:
    if m.chance is None:
        return "none"
    return f"`{m.chance}`" if isinstance(m.chance, str) else f"{m.chance:g}"


def _text(text: str) -> str:
    """Plain text for a Markdown cell: ``<`` and ``>`` escaped (a renderer would read ``<attr>`` as a tag)."""
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def measure_rows() -> list[list[str]]:
    """One row per measure a gate rule may name, from the family registry and :data:`DEFENSE_METRICS`."""
    named = [(f"{name}.{m.pattern}", m) for name, family in load_families().items() for m in family.metrics]
    named += [(f"defenses.{m.pattern}", m) for m in DEFENSE_METRICS]
    return [[f"`{name}`", _direction(m), m.unit, m.range_text(), f"`{m.ci}`" if m.ci else "none", _chance(m),
             m.bands.describe(bool(m.higher_is_leakier), m.show) if m.bands else "",
             f"`{m.headline}`" if m.headline else "", _text(m.description)]
            for name, m in named]


def measures_markdown() -> str:
    """The measures table as SCHEMA.md holds it (between its markers)."""
    lines = ["| " + " | ".join(MEASURE_COLUMNS) + " |", "|" + "---|" * len(MEASURE_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in measure_rows()]
    return "\n".join(lines)


def doc_measure_rows(text: str) -> list[list[str]]:
    """The rows of the table between SCHEMA.md's measures markers."""
    assert MEASURES_BEGIN in text and MEASURES_END in text, f"SCHEMA.md lacks {MEASURES_BEGIN} ... {MEASURES_END}"
    block = text.split(MEASURES_BEGIN, 1)[1].split(MEASURES_END, 1)[0]
    rows = [line for line in block.strip().splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows[2:]]


# --- the audit ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """``results.json`` of one small audit that writes as many of the schema's keys as a fast run can."""
    root = tmp_path_factory.mktemp("schema")
    corpus = write_tone_corpus(root / "corpus", n_speakers=8, n_utts=6, seconds=0.5)
    with open(corpus / "manifest.csv", "a") as fh:  # one unreadable clip: skipped_audio and its weakening
        fh.write("audio/broken.wav,spk0,HELLO WORLD,0.500,M,0\n")
    (corpus / "audio" / "broken.wav").write_bytes(b"not a wav file")
    config = root / "audit.toml"
    config.write_text(
        f'model = "tiny-random-wav2vec2"\ncorpus = "{corpus}"\nout = "{root / "run"}"\n'
        f'cache_dir = "{root / "store"}"\nlayers = [0, 1]\nskip_bad_audio = true\n'
        'attacks = ["speaker_id", "verification", "attributes", "inversion"]\nutility = "classification:digit"\n'
        'defense_attacks = ["speaker_id", "verification", "attributes"]\n'
        '[speaker_id]\nattackers = ["logreg", "mlp", "frame"]\nn_boot = 200\nframe_max_epochs = 2\n'
        'frame_channels = 16\nframe_layers = ["leakiest"]\n'
        '[verification]\nscorers = ["lda", "plda", "frame"]\nn_boot = 200\nframe_max_epochs = 2\n'
        'frame_channels = 16\nframe_layers = ["leakiest"]\n'
        '[attributes]\nn_boot = 200\ntest_fraction = 0.5\n'
        '[inversion]\nmax_epochs = 2\nn_eval = 4\nn_examples = 1\nskip_judges = true\nshuffled_control = true\n'
        'n_boot = 200\nlayers = ["leakiest"]\n'
        '[utility_probe]\nn_boot = 200\n'
        '[[defense]]\nname = "noise"\nsigma = 1.0\nlayers = ["leakiest"]\n'
        '[[defense]]\nname = "pca"\nk = 4\nlayers = ["leakiest"]\n'
        '[[defense]]\nname = "adversarial"\nepochs = 2\nlayers = ["leakiest"]\n'
        '[[defense]]\nname = "adversarial"\nlr = 1e9\nepochs = 2\nlayers = ["leakiest"]\n')
    policy = root / "policy.toml"
    policy.write_text(
        'allow_weakened = ["budget"]\n'
        '[[rule]]\nid = "reid"\nmetric = "speaker_id.top1"\nmax_ratio_to_chance = 1.5\n'
        'justification = "planted: distinct synthetic voices are far above chance"\n\n'
        '[[rule]]\nmetric = "defenses.strongest.top1"\nlayer = "at_least_one"\nmax = 0.9\n'
        'justification = "one defense setting must keep re-identification below 90%"\n')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["run", "--config", str(config), "--policy", str(policy), "--no-progress"]) == 1
    return json.loads((root / "run" / "results.json").read_text())


# --- the tests ------------------------------------------------------------------------------------------


def test_every_key_of_a_runs_results_is_documented(results):
    schema = Schema(SCHEMA_MD.read_text(encoding="utf-8"))
    # the run wrote what the fixture set out to cover (else the check below proves less than it says)
    assert results["skipped_audio"] and results["verdict"]["rules"] and len(results["defenses"]) == 5
    assert any(e["status"] == "failed" for e in results["defenses"])
    assert any(la["attacks"]["inversion"].get("frame", {}).get("signal") for la in results["layers"])
    missing = undocumented(results, schema)
    assert not missing, (f"{len(missing)} key path(s) of results.json not documented in reports/SCHEMA.md "
                         "(add them there, and a line to reports/CHANGELOG.md):\n  " + "\n  ".join(missing))


def test_a_path_missing_from_the_doc_is_reported(results):
    """The check can fail: a key the doc does not name, at the top and deep in a layer, is caught."""
    schema = Schema(SCHEMA_MD.read_text(encoding="utf-8"))
    planted = json.loads(json.dumps(results))
    planted["not_a_documented_key"] = 1
    planted["layers"][0]["attacks"]["speaker_id"]["attackers"]["logreg"]["budget"]["no_such_budget_key"] = 2
    planted["defenses"][1]["scenarios"]["semi_informed"]["speaker_id"]["no_such_result_key"] = 3
    assert undocumented(planted, schema) == [
        "defenses[].scenarios.semi_informed.speaker_id.no_such_result_key",
        "layers[].attacks.speaker_id.attackers.logreg.budget.no_such_budget_key", "not_a_documented_key"]


def test_the_matching_rules_on_a_small_doc():
    """Placeholders (restricted ones, with a suffix), braces, headings, layouts and empty containers, as the doc says."""
    schema = Schema("## Top\n\n| key | type | meaning |\n|---|---|---|\n| `a.{b,c}`, `n[].x` | | |\n\n"
                    "### `layers[].attacks.<family>`\n\n| key | type | meaning |\n|---|---|---|\n"
                    "| `top1` | | |\n| `by.<name>` | | |\n| `<attr>_cca.cca` | | |\n\n"
                    "- `scen.<scenario>` is laid out as `layers[].attacks`\n")
    ok = [{"a": {"b": 1, "c": None}, "n": [{"x": 1}, {"x": 2}], "layers": [{"attacks": {"speaker_id": {
        "top1": 0.5, "by": {"anything here": 1}, "gender_cca": {"cca": 0.1}}, "inversion": {"by": {}}}}]},
          {"scen": {"ignorant": {"verification": {"top1": 0.2}}}}]
    assert [undocumented(r, schema) for r in ok] == [[], []]
    bad = {"a": {"d": 1}, "n": [{"y": 1}], "layers": [{"attacks": {"no_family": {"top1": 1}, "speaker_id": {
        "_cca": {"cca": 1}, "by": {"k": {"deeper": 1}}}}}], "scen": {"nonsense": {"speaker_id": {"top1": 1}}}}
    assert undocumented(bad, schema) == ["a.d", "layers[].attacks.no_family.top1", "layers[].attacks.speaker_id._cca.cca",
                                         "layers[].attacks.speaker_id.by.k.deeper", "n[].y",
                                         "scen.nonsense.speaker_id.top1"]


def test_the_measures_table_is_the_registries():
    text = SCHEMA_MD.read_text(encoding="utf-8")
    assert doc_measure_rows(text) == measure_rows(), (
        "reports/SCHEMA.md's measures table differs from the registries; replace it between the markers with:\n"
        + measures_markdown())


def test_the_doc_states_the_current_schema_version():
    text = SCHEMA_MD.read_text(encoding="utf-8")
    stated = re.search(r"Current schema: \*\*(\d+\.\d+)\*\*", text)
    assert stated and stated.group(1) == SCHEMA_VERSION, f"SCHEMA.md must state 'Current schema: **{SCHEMA_VERSION}**'"
    changelog = (SCHEMA_MD.parent / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## {re.escape(SCHEMA_VERSION)}\b", changelog, re.M), \
        f"reports/CHANGELOG.md has no '## {SCHEMA_VERSION}' entry"


if __name__ == "__main__":  # print the measures table to paste into SCHEMA.md
    print(measures_markdown())
