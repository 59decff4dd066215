"""Resemblyzer's GE2E speaker encoder with every layer exposed.

The audit probes each layer of this encoder for speaker leakage and uses its
final utterance embedding as the "speaker judge". Preprocessing follows
resemblyzer exactly (40-channel mel, 25 ms window, 10 ms hop at 16 kHz; volume
normalised to -30 dBFS, gain only, increase only) except that silences are
*not* trimmed with webrtcvad, so that LSTM frames stay aligned to the audio.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from audit.audio import as_waveform
from audit.errors import AudioError, ModelLoadError

with warnings.catch_warnings():
    # resemblyzer imports webrtcvad (-> pkg_resources) and a deprecated scipy
    # namespace; both only warn.
    warnings.simplefilter("ignore", UserWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    import resemblyzer
    from resemblyzer import audio as _rz_audio
    from resemblyzer import hparams as _rz_hp
    from resemblyzer.voice_encoder import VoiceEncoder as _RzVoiceEncoder

__all__ = ["GE2EEncoder", "DEFAULT_WEIGHTS_PATH", "layer_frame_rates"]

DEFAULT_WEIGHTS_PATH: Path = Path(resemblyzer.__file__).resolve().parent / "pretrained.pt"

#: Partial-utterance parameters of ``VoiceEncoder.embed_utterance`` (its defaults).
_PARTIAL_RATE = 1.3
_PARTIAL_MIN_COVERAGE = 0.75


def partial_hop_frames() -> int:
    """Mel frames between consecutive partial windows under resemblyzer's slicing rule."""
    _, mel_slices = GE2EEncoder._partial_slices(10 * _rz_hp.sampling_rate)
    return mel_slices[1].start - mel_slices[0].start


def layer_frame_rates() -> list[float]:
    """Frame rate (Hz) of each exposed layer: 100 Hz LSTM frames, then one embedding per partial hop."""
    frame_rate = 1000.0 / _rz_hp.mel_window_step
    return [frame_rate] * 3 + [float(frame_rate / partial_hop_frames())]


class _GE2ENet(nn.Module):
    """The GE2E network with its 3-layer LSTM split into single layers.

    Splitting keeps the computation of ``nn.LSTM(num_layers=3)`` but lets every
    layer's hidden-state sequence be read out.
    """

    def __init__(self, n_mels: int, hidden: int, n_layers: int, emb: int) -> None:
        super().__init__()
        sizes = [n_mels] + [hidden] * n_layers
        self.lstms = nn.ModuleList(
            nn.LSTM(sizes[k], hidden, num_layers=1, batch_first=True) for k in range(n_layers)
        )
        self.linear = nn.Linear(hidden, emb)

    def hidden_states(self, mels: torch.Tensor) -> list[torch.Tensor]:
        """Return each LSTM layer's output sequence, each (batch, frames, hidden)."""
        outs = []
        x = mels
        for lstm in self.lstms:
            x, _ = lstm(x)
            outs.append(x)
        return outs

    def embed(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """L2-normalised ReLU(linear) of the last layer's final hidden state."""
        raw = torch.relu(self.linear(last_hidden))
        return raw / torch.norm(raw, dim=1, keepdim=True)


def _load_net(path: Path) -> _GE2ENet:
    """Build the network and load resemblyzer's checkpoint into it."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: GE2E weights file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint["model_state"]
    except Exception as exc:  # torch raises many types for corrupt files
        raise ModelLoadError(f"{path}: cannot read GE2E checkpoint ({exc})") from exc
    net = _GE2ENet(
        _rz_hp.mel_n_channels,
        _rz_hp.model_hidden_size,
        _rz_hp.model_num_layers,
        _rz_hp.model_embedding_size,
    )
    mapped = {}
    for k in range(_rz_hp.model_num_layers):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            key = f"lstm.{kind}_l{k}"
            if key not in state:
                raise ModelLoadError(f"{path}: GE2E checkpoint lacks tensor {key!r}")
            mapped[f"lstms.{k}.{kind}_l0"] = state[key]
    for kind in ("weight", "bias"):
        key = f"linear.{kind}"
        if key not in state:
            raise ModelLoadError(f"{path}: GE2E checkpoint lacks tensor {key!r}")
        mapped[key] = state[key]
    try:
        net.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: GE2E checkpoint has wrong tensor shapes ({exc})") from exc
    return net.float().eval()


class GE2EEncoder:
    """Resemblyzer's GE2E speaker encoder (CPU, float32, eval) with per-layer outputs.

    Layers, in order:

    * ``lstm1``, ``lstm2``, ``lstm3``: hidden-state sequences (T x 256) of one
      pass of the LSTM stack over the whole utterance's mel frames, one frame
      per 10 ms hop (100 Hz); T = 1 + n_samples // 160 (librosa, centred).
    * ``embedding``: resemblyzer's per-partial L2-normalised embeddings
      (n_partials x 256). Partial i covers mel frames
      ``[i * partial_hop_frames, i * partial_hop_frames + 160)``, i.e. audio
      starting at ``i * partial_hop_frames / 100`` s and lasting 1.6 s. With
      resemblyzer's rule (rate 1.3 partials/s, hop ``round(16000 / 1.3 / 160)``
      = 77 frames) its frame rate is ``1 / 0.77 s`` ~= 1.2987 Hz.

    Parameters
    ----------
    weights_path
        Checkpoint to load; defaults to resemblyzer's packaged ``pretrained.pt``.
    """

    layer_names: list[str] = ["lstm1", "lstm2", "lstm3", "embedding"]
    num_layers: int = 4
    hidden_sizes: list[int] = [256, 256, 256, 256]
    sample_rate: int = _rz_hp.sampling_rate

    def __init__(self, weights_path: str | Path | None = None) -> None:
        self.weights_path: Path = (
            DEFAULT_WEIGHTS_PATH if weights_path is None else Path(weights_path).resolve()
        )
        self._net = _load_net(self.weights_path)
        self.hop_length: int = int(self.sample_rate * _rz_hp.mel_window_step / 1000)
        self.partial_n_frames: int = _rz_hp.partials_n_frames
        self.partial_hop_frames: int = partial_hop_frames()
        self.frame_rates: list[float] = layer_frame_rates()

    @staticmethod
    def _partial_slices(n_samples: int) -> tuple[list[slice], list[slice]]:
        """Resemblyzer's wav and mel partial slices for an utterance of n_samples."""
        return _RzVoiceEncoder.compute_partial_slices(
            n_samples, _PARTIAL_RATE, _PARTIAL_MIN_COVERAGE
        )

    def _prepare(self, wav: np.ndarray, source: str) -> tuple[np.ndarray, int, list[slice]]:
        """Validate and volume-normalise wav; return mel, #aligned frames, partial slices.

        The mel is computed once on the wav zero-padded as ``embed_utterance``
        pads it; librosa pads with zeros when centring, so its first
        ``1 + len(wav) // hop`` frames equal the unpadded utterance's mel.
        """
        arr = as_waveform(wav, source=source)
        if not np.any(arr):
            raise AudioError(f"{source}: audio is digital silence (all samples zero)")
        arr = np.asarray(
            _rz_audio.normalize_volume(arr, _rz_hp.audio_norm_target_dBFS, increase_only=True),
            dtype=np.float32,
        )
        wav_slices, mel_slices = self._partial_slices(len(arr))
        n_frames = 1 + len(arr) // self.hop_length
        padded = arr
        if wav_slices[-1].stop >= len(arr):
            padded = np.pad(arr, (0, wav_slices[-1].stop - len(arr)), "constant")
        mel = _rz_audio.wav_to_mel_spectrogram(padded)
        return mel, n_frames, mel_slices

    def _partial_embeddings(
        self, mel: np.ndarray, mel_slices: list[slice], source: str
    ) -> np.ndarray:
        """Embed all partial windows in one batched LSTM call (n_partials x 256)."""
        batch = torch.from_numpy(np.stack([mel[s] for s in mel_slices]))
        with torch.inference_mode():
            last = self._net.hidden_states(batch)[-1][:, -1]
            emb = self._net.embed(last).numpy()
        if not np.all(np.isfinite(emb)):
            raise AudioError(f"{source}: GE2E produced a degenerate (all-zero) partial embedding")
        return emb

    def layers(self, wav: np.ndarray, *, source: str = "<array>") -> list[np.ndarray]:
        """Return the four layers' outputs (T_l x D, float32) for one 16 kHz mono clip.

        Parameters
        ----------
        wav
            Mono waveform at 16 kHz, float samples in [-1, 1].
        source
            Name of the clip (e.g. its file path) used in error messages.
        """
        mel, n_frames, mel_slices = self._prepare(wav, source)
        full = torch.from_numpy(np.ascontiguousarray(mel[None, :n_frames]))
        with torch.inference_mode():
            seqs = [h[0].numpy().copy() for h in self._net.hidden_states(full)]
        return seqs + [self._partial_embeddings(mel, mel_slices, source)]

    def embed_utterance(self, wav: np.ndarray, *, source: str = "<array>") -> np.ndarray:
        """Return the speaker-judge embedding (256,): re-normalised mean of partial embeddings.

        Equals resemblyzer's ``VoiceEncoder.embed_utterance`` on the
        volume-normalised, untrimmed clip.
        """
        mel, _, mel_slices = self._prepare(wav, source)
        partials = self._partial_embeddings(mel, mel_slices, source)
        raw = np.mean(partials, axis=0)
        return (raw / np.linalg.norm(raw, 2)).astype(np.float32)
