"""Speech datasets: TIMIT phones per frame, spoken digits (FSDD) and Speech Commands words.

Every loader decodes the audio once with ``soundfile``, computes log-mel filterbank (or MFCC)
features with ``torchaudio.transforms``, normalises each utterance to zero mean and unit variance
per feature, and keeps the features in memory. Batches are padded to the longest utterance and
come with a mask, because packed sequences have no forward-mode AD::

    inputs = {"features": (batch, time, num_features) float32, "mask": (batch, time) bool}
    targets = (batch,) int64 for utterance labels, or (batch, time) int64 for frame labels,
              with -100 on padding and on frames that have no class (TIMIT's q)

Folders under the data root (``data_root=...`` or ``$FWDBWD_DATA``)::

    speech/timit/      a TIMIT copy: LDC layout or the NLTK sample (see load_timit)
    speech/fsdd/recordings/{digit}_{speaker}_{index}.wav
    speech/SpeechCommands/speech_commands_v0.02/<word>/<hash>_nohash_<n>.wav
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import soundfile
import torch
import torchaudio
from torch.utils.data import Dataset

from fwdbwd_lib.data import DATA_ENV_VAR, DataSplits
from fwdbwd_lib.registry import register_dataset

logger = logging.getLogger(__name__)

FEATURE_KINDS = ("log_mel", "mfcc")
IGNORE_INDEX = -100  # the target of padding and of unlabelled frames (F.cross_entropy's default)


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureSettings:
    """Frame-level acoustic features: 25 ms windows every 10 ms by default.

    ``kind`` is ``"log_mel"`` (log mel filterbank energies, ``num_mels`` per frame) or
    ``"mfcc"`` (``num_mfcc`` cepstral coefficients of ``num_mels`` mel bands). Frames are centred
    on samples ``0, hop, 2·hop, ...`` (torchaudio's ``center=True``), so an utterance of ``n``
    samples has ``1 + n // hop`` frames.
    """

    sample_rate: int
    kind: str = "log_mel"
    num_mels: int = 40
    num_mfcc: int = 13
    window_ms: float = 25.0
    hop_ms: float = 10.0

    def __post_init__(self):
        if self.kind not in FEATURE_KINDS:
            raise ValueError(
                f"unknown feature kind {self.kind!r} in dataset.features: expected one of "
                f"{', '.join(FEATURE_KINDS)}"
            )
        if self.num_mels < 1 or self.num_mfcc < 1:
            raise ValueError(
                f"dataset.num_mels and dataset.num_mfcc must be positive, got {self.num_mels} "
                f"and {self.num_mfcc}"
            )
        if self.kind == "mfcc" and self.num_mfcc > self.num_mels:
            raise ValueError(
                f"dataset.num_mfcc={self.num_mfcc} exceeds dataset.num_mels={self.num_mels}; "
                "the cepstrum has at most one coefficient per mel band"
            )
        if not 0 < self.hop_ms <= self.window_ms:
            raise ValueError(
                f"need 0 < hop_ms <= window_ms, got hop_ms={self.hop_ms}, window_ms={self.window_ms}"
            )

    @property
    def win_length(self) -> int:
        return round(self.sample_rate * self.window_ms / 1000)

    @property
    def hop_length(self) -> int:
        return round(self.sample_rate * self.hop_ms / 1000)

    @property
    def n_fft(self) -> int:
        # At least 512 points: at 8 kHz a 256-point FFT leaves some of 40 mel bands without a bin.
        return max(512, 1 << (self.win_length - 1).bit_length())

    @property
    def num_features(self) -> int:
        return self.num_mels if self.kind == "log_mel" else self.num_mfcc

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop_length

    def transform(self) -> torch.nn.Module:
        mel_kwargs = {"n_fft": self.n_fft, "win_length": self.win_length,
                      "hop_length": self.hop_length, "n_mels": self.num_mels, "center": True}
        if self.kind == "mfcc":
            return torchaudio.transforms.MFCC(
                self.sample_rate, n_mfcc=self.num_mfcc, log_mels=True, melkwargs=mel_kwargs
            )
        return torchaudio.transforms.MelSpectrogram(self.sample_rate, power=2.0, **mel_kwargs)


def compute_features(waveform: torch.Tensor, settings: FeatureSettings,
                     transform: torch.nn.Module | None = None) -> torch.Tensor:
    """Return the per-utterance normalised features ``(frames, num_features)`` of a waveform.

    ``waveform`` is ``(samples,)`` at ``settings.sample_rate``. Each feature is shifted and scaled
    to zero mean and unit variance over the utterance's frames.
    """
    transform = transform or settings.transform()
    with torch.no_grad():
        spectrum = transform(waveform)  # (num_features, frames)
    if settings.kind == "log_mel":
        spectrum = spectrum.clamp_min(1e-10).log()
    frames = spectrum.T.contiguous()  # (frames, num_features)
    mean = frames.mean(dim=0, keepdim=True)
    std = frames.std(dim=0, unbiased=False, keepdim=True)
    return (frames - mean) / (std + 1e-5)


def read_audio(path: Path, sample_rate: int) -> torch.Tensor:
    """Read a mono waveform ``(samples,)`` in [-1, 1] at ``sample_rate`` (resampled if needed).

    ``soundfile`` reads RIFF WAV and NIST SPHERE (TIMIT's ``.WAV`` files) with 16-bit PCM.
    Multichannel audio is averaged to mono.
    """
    try:
        audio, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise ValueError(
            f"cannot read audio file {path}: {error}. Expected WAV or NIST SPHERE with PCM "
            "samples; SPHERE files compressed with shorten must be decompressed first "
            "(for example with sph2pipe)"
        ) from None
    waveform = torch.from_numpy(audio.mean(axis=1))  # (samples,)
    if file_rate != sample_rate:
        waveform = torchaudio.functional.resample(waveform, file_rate, sample_rate)
    return waveform


@functools.lru_cache(maxsize=16)
def _decode_features(paths: tuple[Path, ...], settings: FeatureSettings) -> tuple[torch.Tensor, ...]:
    """Decode and featurise every file once per process (chapters train many runs on one set)."""
    transform = settings.transform()
    return tuple(compute_features(read_audio(p, settings.sample_rate), settings, transform)
                 for p in paths)


# ---------------------------------------------------------------------------------------------
# The dataset: padded batches with a mask
# ---------------------------------------------------------------------------------------------

class SpeechFeatureDataset(Dataset):
    """Utterance features in memory, served as padded batches ``({"features", "mask"}, targets)``.

    Args:
        features: one ``(frames_i, num_mels)`` tensor per utterance.
        targets: ``(N,)`` class ids (utterance classification), or one ``(frames_i,)`` tensor of
            class ids per utterance (frame classification, where ``-100`` marks frames to ignore).
        context_frames: k, the number of neighbours served on each side of a frame, stacked into
            one vector of ``(2k + 1)·num_mels`` features (edge frames are repeated).
        utterance_ids, speakers: names kept for inspection (e.g. ``"dr1-fvmh0/si836"``).
        class_names: the label of each class id.

    ``__getitems__`` builds a whole batch at once, so a DataLoader whose ``collate_fn`` is this
    dataset's ``collate_fn`` indexes once per batch.
    """

    def __init__(
        self,
        features: Sequence[torch.Tensor],
        targets: torch.Tensor | Sequence[torch.Tensor],
        context_frames: int = 0,
        utterance_ids: Sequence[str] = (),
        speakers: Sequence[str] = (),
        class_names: Sequence[str] = (),
    ):
        if context_frames < 0:
            raise ValueError(f"dataset.context_frames must be >= 0, got {context_frames}")
        self.lengths = torch.tensor([len(f) for f in features], dtype=torch.long)
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths
        self.frames = torch.cat(list(features)) if len(features) else torch.zeros(0, 1)
        self.frame_level = not isinstance(targets, torch.Tensor)
        if self.frame_level:
            assert [len(t) for t in targets] == self.lengths.tolist()
            self.targets = torch.cat(list(targets)) if len(targets) else torch.zeros(0, dtype=torch.long)
        else:
            self.targets = targets.long()
        self.context_frames = context_frames
        self.utterance_ids = list(utterance_ids)
        self.speakers = list(speakers)
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_features(self) -> int:
        return self.frames.shape[1] * (2 * self.context_frames + 1)

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def utterance(self, index: int) -> torch.Tensor:
        """Return the stored features ``(frames, num_mels)`` of one utterance (no context)."""
        start = int(self.offsets[index])
        return self.frames[start : start + int(self.lengths[index])]

    def frame_targets(self, index: int) -> torch.Tensor:
        start = int(self.offsets[index])
        return self.targets[start : start + int(self.lengths[index])]

    def __getitem__(self, index: int):
        inputs, targets = self.__getitems__([index])
        length = int(self.lengths[index])
        item = {"features": inputs["features"][0, :length], "mask": inputs["mask"][0, :length]}
        return item, targets[0, :length] if self.frame_level else targets[0]

    def __getitems__(self, indices):
        indices = [int(i) for i in indices]
        lengths = self.lengths[indices]
        batch, longest = len(indices), int(lengths.max())
        features = torch.zeros(batch, longest, self.num_features)  # (batch, time, features)
        mask = torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)  # (batch, time)
        if self.frame_level:
            targets = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
        else:
            targets = self.targets[indices]

        for row, index in enumerate(indices):
            length = int(lengths[row])
            features[row, :length] = stack_context(self.utterance(index), self.context_frames)
            if self.frame_level:
                targets[row, :length] = self.frame_targets(index)
        return {"features": features, "mask": mask}, targets

    @staticmethod
    def collate_fn(batch):
        return batch


def stack_context(frames: torch.Tensor, context_frames: int) -> torch.Tensor:
    """Stack each frame with its k neighbours on each side, ``(T, F)`` to ``(T, (2k + 1)·F)``.

    The first and last frames are repeated at the edges. The stacked vector is ordered from the
    leftmost neighbour to the rightmost.
    """
    if context_frames == 0:
        return frames
    first = frames[:1].expand(context_frames, -1)
    last = frames[-1:].expand(context_frames, -1)
    padded = torch.cat([first, frames, last])  # (T + 2k, F)
    windows = padded.unfold(0, 2 * context_frames + 1, 1)  # (T, F, 2k + 1)
    return windows.transpose(1, 2).reshape(len(frames), -1)


def _take(items: list, size: int | None, generator: np.random.Generator, name: str) -> list:
    """Return ``size`` items drawn without replacement in their original order (None: all)."""
    if size is None:
        return items
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"dataset.{name} must be a positive integer or null (all), got {size!r}")
    if size > len(items):
        raise ValueError(f"dataset.{name}={size} exceeds the {len(items)} utterances available")
    chosen = np.sort(generator.permutation(len(items))[:size])
    return [items[i] for i in chosen]


# ---------------------------------------------------------------------------------------------
# TIMIT: frame-wise phone classification with the 39 folded classes
# ---------------------------------------------------------------------------------------------

# The 61 phone labels of TIMIT's transcriptions (its phoncode.doc), each mapped to one of the
# 39 classes of Lee and Hon (1989), "Speaker-independent phone recognition using hidden Markov
# models", IEEE Trans. ASSP 37(11). The glottal stop q has no class: its frames are ignored.
TIMIT_61_TO_39: dict[str, str | None] = {
    "aa": "aa", "ao": "aa",
    "ae": "ae",
    "ah": "ah", "ax": "ah", "ax-h": "ah",
    "aw": "aw",
    "ay": "ay",
    "b": "b",
    "ch": "ch",
    "d": "d",
    "dh": "dh",
    "dx": "dx",
    "eh": "eh",
    "er": "er", "axr": "er",
    "ey": "ey",
    "f": "f",
    "g": "g",
    "hh": "hh", "hv": "hh",
    "ih": "ih", "ix": "ih",
    "iy": "iy",
    "jh": "jh",
    "k": "k",
    "l": "l", "el": "l",
    "m": "m", "em": "m",
    "n": "n", "en": "n", "nx": "n",
    "ng": "ng", "eng": "ng",
    "ow": "ow",
    "oy": "oy",
    "p": "p",
    "r": "r",
    "s": "s",
    "sh": "sh", "zh": "sh",
    "t": "t",
    "th": "th",
    "uh": "uh",
    "uw": "uw", "ux": "uw",
    "v": "v",
    "w": "w",
    "y": "y",
    "z": "z",
    "pcl": "sil", "tcl": "sil", "kcl": "sil", "bcl": "sil", "dcl": "sil", "gcl": "sil",
    "h#": "sil", "pau": "sil", "epi": "sil",
    "q": None,
}
TIMIT_CLASSES: tuple[str, ...] = tuple(sorted({c for c in TIMIT_61_TO_39.values() if c}))
TIMIT_CLASS_IDS = {name: index for index, name in enumerate(TIMIT_CLASSES)}
TIMIT_SAMPLE_RATE = 16000

# The 24-speaker core test set, from TIMIT's testset.doc (Table 1: 2 male and 1 female speaker
# per dialect region), as <sex><initials><digit> in lower case.
TIMIT_CORE_TEST_SPEAKERS = (
    "mdab0", "mwbt0", "felc0",  # DR1
    "mtas1", "mwew0", "fpas0",  # DR2
    "mjmp0", "mlnt0", "fpkt0",  # DR3
    "mlll0", "mtls0", "fjlm0",  # DR4
    "mbpm0", "mklt0", "fnlp0",  # DR5
    "mcmj0", "mjdh0", "fmgd0",  # DR6
    "mgrt0", "mnjm0", "fdhc0",  # DR7
    "mjln0", "mpam0", "fmld0",  # DR8
)
# The 50-speaker development set of Halberstadt (1998, MIT PhD thesis), drawn from the test
# speakers outside the core set. The list is the one in Kaldi's TIMIT recipe
# (egs/timit/s5/conf/dev_spk.list), which SpeechBrain's TIMIT recipe repeats speaker for speaker.
TIMIT_DEVELOPMENT_SPEAKERS = (
    "fadg0", "faks0", "fcal1", "fcmh0", "fdac1", "fdms0", "fdrw0", "fedw0", "fgjd0", "fjem0",
    "fjmg0", "fjsj0", "fkms0", "fmah0", "fmml0", "fnmr0", "frew0", "fsem0", "majc0", "mbdg0",
    "mbns0", "mbwm0", "mcsh0", "mdlf0", "mdls0", "mdvc0", "mers0", "mgjf0", "mglb0", "mgwt0",
    "mjar0", "mjfc0", "mjsw0", "mmdb1", "mmdm2", "mmjr0", "mmwh0", "mpdf0", "mrcs0", "mreb0",
    "mrjm4", "mrjr0", "mroa0", "mrtk0", "mrws1", "mtaa0", "mtdt0", "mteb0", "mthc0", "mwjg0",
)
TIMIT_TRAINING_SPEAKER_COUNT = 462
# With the 16-speaker NLTK sample: held-out speakers of each sex, for validation and for test.
SAMPLE_HELD_OUT_PER_SEX = 1

_SAMPLE_SPEAKER_DIR = re.compile(r"^dr([1-8])-([fm])([a-z]{3}\d)$")
_LDC_SPEAKER_DIR = re.compile(r"^([fm])([a-z]{3}\d)$")

TIMIT_LAYOUTS = (
    "the LDC layout <root>/speech/timit/[...]/TRAIN|TEST/DR1..DR8/<speaker>/<utterance>.WAV "
    "with .PHN beside it (any letter case; up to 3 folders between timit/ and TRAIN|TEST), or "
    "the NLTK sample layout <root>/speech/timit/dr<region>-<sex><speaker>/<utterance>.wav|.phn"
)


class PhoneSegment(NamedTuple):
    """One line of a TIMIT ``.PHN`` file: ``[start, end)`` in samples and the phone label."""

    start: int
    end: int
    phone: str


@dataclass(frozen=True)
class TimitUtterance:
    """The files and the speaker of one TIMIT utterance."""

    speaker: str          # lower case, e.g. "fvmh0"
    sex: str              # "f" or "m"
    dialect_region: int   # 1-8
    name: str             # lower case, e.g. "si836"
    audio_path: Path
    phone_path: Path
    corpus_split: str     # "train" or "test" in the LDC layout, "sample" in the NLTK sample

    @property
    def utterance_id(self) -> str:
        return f"dr{self.dialect_region}-{self.speaker}/{self.name}"


def read_phone_segments(path: Path) -> list[PhoneSegment]:
    """Parse a TIMIT ``.PHN`` file into segments sorted by start sample."""
    segments = []
    with open(path, encoding="ascii") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3 or not (fields[0].isdigit() and fields[1].isdigit()):
                raise ValueError(
                    f"{path}:{line_number}: expected '<start sample> <end sample> <phone>', got "
                    f"{line.strip()!r}"
                )
            phone = fields[2].lower()
            if phone not in TIMIT_61_TO_39:
                raise ValueError(
                    f"{path}:{line_number}: unknown phone {phone!r}; TIMIT uses the 61 labels "
                    f"{', '.join(sorted(TIMIT_61_TO_39))}"
                )
            segments.append(PhoneSegment(int(fields[0]), int(fields[1]), phone))
    return sorted(segments)


def frame_phone_targets(segments: Sequence[PhoneSegment], num_frames: int,
                        hop_length: int) -> torch.Tensor:
    """Return the 39-class target of each frame, ``(num_frames,)`` int64.

    Frame t is centred on sample ``t·hop_length`` and takes the class of the segment that
    contains that sample. Frames outside every segment or inside a ``q`` segment get -100.
    """
    centres = np.arange(num_frames) * hop_length
    targets = np.full(num_frames, IGNORE_INDEX, dtype=np.int64)
    if not segments:
        return torch.from_numpy(targets)
    starts = np.array([s.start for s in segments])
    ends = np.array([s.end for s in segments])
    classes = np.array([
        TIMIT_CLASS_IDS[TIMIT_61_TO_39[s.phone]] if TIMIT_61_TO_39[s.phone] else IGNORE_INDEX
        for s in segments
    ])
    index = np.searchsorted(starts, centres, side="right") - 1
    safe = index.clip(0)
    inside = (index >= 0) & (centres < ends[safe])
    targets[inside] = classes[safe[inside]]
    return torch.from_numpy(targets)


def _child(folder: Path, name: str) -> Path | None:
    """Return the child of ``folder`` whose name equals ``name`` in any letter case."""
    for child in folder.iterdir():
        if child.name.lower() == name:
            return child
    return None


def _find_ldc_root(timit_dir: Path, max_depth: int = 3) -> Path | None:
    """Return the folder that contains TRAIN and TEST (any case) with DR1 in each, if any."""
    pending = [(timit_dir, 0)]
    while pending:
        folder, depth = pending.pop(0)
        train, test = _child(folder, "train"), _child(folder, "test")
        if train and test and train.is_dir() and test.is_dir() and _child(train, "dr1"):
            return folder
        if depth < max_depth:
            pending += [(c, depth + 1) for c in sorted(folder.iterdir()) if c.is_dir()]
    return None


def _speaker_utterances(speaker_dir: Path, speaker: str, sex: str, region: int,
                        corpus_split: str) -> list[TimitUtterance]:
    """List a speaker's utterances that have both audio and phones, SA sentences excluded.

    The audio file is ``<utterance>.wav`` in any case, or ``<utterance>.wav.wav`` as in copies
    whose SPHERE files were converted to RIFF WAV.
    """
    files = {p.name.lower(): p for p in speaker_dir.iterdir() if p.is_file()}
    utterances = []
    for name, path in sorted(files.items()):
        if not name.endswith(".phn"):
            continue
        stem = name[: -len(".phn")]
        if stem.startswith("sa"):
            continue  # every speaker reads SA1/SA2, so TIMIT's testset.doc excludes them
        audio = files.get(f"{stem}.wav") or files.get(f"{stem}.wav.wav")
        if audio is None:
            logger.warning("TIMIT: %s has no audio file beside it; skipped", path)
            continue
        utterances.append(TimitUtterance(speaker, sex, region, stem, audio, path, corpus_split))
    return utterances


def list_timit_utterances(timit_dir: Path) -> tuple[str, list[TimitUtterance]]:
    """Find a TIMIT copy under ``timit_dir`` and list its SI and SX utterances.

    Returns the layout (``"ldc"`` or ``"sample"``) and the utterances. Raises FileNotFoundError
    naming both accepted layouts when neither is found.
    """
    utterances: list[TimitUtterance] = []
    ldc_root = _find_ldc_root(timit_dir) if timit_dir.is_dir() else None
    if ldc_root is not None:
        for corpus_split in ("train", "test"):
            for region_dir in sorted(_child(ldc_root, corpus_split).iterdir()):
                match = re.fullmatch(r"dr([1-8])", region_dir.name.lower())
                if not (match and region_dir.is_dir()):
                    continue
                for speaker_dir in sorted(p for p in region_dir.iterdir() if p.is_dir()):
                    speaker_match = _LDC_SPEAKER_DIR.fullmatch(speaker_dir.name.lower())
                    if speaker_match is None:
                        continue
                    utterances += _speaker_utterances(
                        speaker_dir, speaker_dir.name.lower(), speaker_match.group(1),
                        int(match.group(1)), corpus_split,
                    )
        return "ldc", utterances

    if timit_dir.is_dir():
        for speaker_dir in sorted(p for p in timit_dir.iterdir() if p.is_dir()):
            match = _SAMPLE_SPEAKER_DIR.fullmatch(speaker_dir.name.lower())
            if match:
                speaker = match.group(2) + match.group(3)
                utterances += _speaker_utterances(
                    speaker_dir, speaker, match.group(2), int(match.group(1)), "sample"
                )
    if not utterances:
        raise FileNotFoundError(
            f"TIMIT not found under {timit_dir}. Expected {TIMIT_LAYOUTS}. TIMIT is licensed by "
            f"the LDC (LDC93S1) and cannot be downloaded here; point data_root=... or the "
            f"{DATA_ENV_VAR} environment variable at the folder that contains speech/timit."
        )
    return "sample", utterances


def split_timit_speakers(layout: str, utterances: Sequence[TimitUtterance],
                         split_seed: int) -> tuple[list[str], list[str], list[str]]:
    """Return the (train, validation, test) speaker lists.

    LDC layout: all speakers of TRAIN, the 50-speaker development set and the 24-speaker core
    test set (both drawn from TEST). NLTK sample: per sex, ``SAMPLE_HELD_OUT_PER_SEX`` speakers
    for validation and as many for test, drawn with ``split_seed``. The rest train.
    """
    speakers = sorted({u.speaker for u in utterances})
    if layout == "ldc":
        train = sorted({u.speaker for u in utterances if u.corpus_split == "train"})
        test_speakers = {u.speaker for u in utterances if u.corpus_split == "test"}
        missing = sorted((set(TIMIT_DEVELOPMENT_SPEAKERS) | set(TIMIT_CORE_TEST_SPEAKERS))
                         - test_speakers)
        if missing:
            raise FileNotFoundError(
                f"the TIMIT copy lacks test speakers of the development or core test set: "
                f"{', '.join(missing)}; a complete LDC93S1 copy has all 168 test speakers"
            )
        if len(train) != TIMIT_TRAINING_SPEAKER_COUNT:
            logger.warning("TIMIT: %d training speakers found, the full corpus has %d",
                           len(train), TIMIT_TRAINING_SPEAKER_COUNT)
        return train, list(TIMIT_DEVELOPMENT_SPEAKERS), list(TIMIT_CORE_TEST_SPEAKERS)

    generator = np.random.default_rng(split_seed)
    train, validation, test = [], [], []
    for sex in ("f", "m"):
        group = [s for s in speakers if s[0] == sex]
        if len(group) < 2 * SAMPLE_HELD_OUT_PER_SEX + 1:
            raise ValueError(
                f"the TIMIT sample has {len(group)} speakers of sex {sex!r}; a speaker-disjoint "
                f"split needs at least {2 * SAMPLE_HELD_OUT_PER_SEX + 1}"
            )
        order = [group[i] for i in generator.permutation(len(group))]
        validation += order[:SAMPLE_HELD_OUT_PER_SEX]
        test += order[SAMPLE_HELD_OUT_PER_SEX : 2 * SAMPLE_HELD_OUT_PER_SEX]
        train += order[2 * SAMPLE_HELD_OUT_PER_SEX :]
    return sorted(train), sorted(validation), sorted(test)


@functools.lru_cache(maxsize=8)
def _timit_targets(utterances: tuple[TimitUtterance, ...],
                   settings: FeatureSettings) -> tuple[torch.Tensor, ...]:
    targets = []
    for utterance in utterances:
        num_samples = soundfile.info(str(utterance.audio_path)).frames
        segments = read_phone_segments(utterance.phone_path)
        targets.append(frame_phone_targets(segments, settings.num_frames(num_samples),
                                           settings.hop_length))
    return tuple(targets)


def _timit_dataset(utterances: list[TimitUtterance], settings: FeatureSettings,
                   context_frames: int) -> SpeechFeatureDataset:
    for utterance in utterances:
        rate = soundfile.info(str(utterance.audio_path)).samplerate
        if rate != TIMIT_SAMPLE_RATE:
            raise ValueError(
                f"{utterance.audio_path} is sampled at {rate} Hz; TIMIT's phone boundaries are "
                f"sample indices at {TIMIT_SAMPLE_RATE} Hz, so the audio must not be resampled"
            )
    key = tuple(utterances)
    features = _decode_features(tuple(u.audio_path for u in utterances), settings)
    targets = _timit_targets(key, settings)
    return SpeechFeatureDataset(
        features, list(targets), context_frames,
        utterance_ids=[u.utterance_id for u in utterances],
        speakers=[u.speaker for u in utterances],
        class_names=TIMIT_CLASSES,
    )


@register_dataset("timit")
def load_timit(
    root: Path,
    features: str = "log_mel",
    num_mels: int = 40,
    num_mfcc: int = 13,
    context_frames: int = 5,
    train_size: int | None = None,
    validation_size: int | None = None,
    test_size: int | None = None,
    split_seed: int = 0,
) -> DataSplits:
    """TIMIT (Garofolo et al. 1993, LDC93S1): frame-wise classification into 39 phone classes.

    Reads ``<root>/speech/timit`` in either layout (see ``TIMIT_LAYOUTS``). SA sentences are
    excluded. With the full corpus the splits are the standard ones: the 462 training speakers
    (3,696 utterances), the 50-speaker development set of Halberstadt (1998) for validation
    (400 utterances) and the 24-speaker core test set (192 utterances). With the 16-speaker NLTK
    sample (1 female and 1 male speaker per dialect region, all TIMIT training speakers, 8 SI/SX
    utterances each) the split is speaker-disjoint and balanced by sex. Six female and six male
    speakers train, one of each sex validates and one of each sex tests, drawn with
    ``split_seed``.

    Targets are per frame (10 ms hop, frames centred on their sample), folded from 61 phones to
    39 classes. Frames labelled q get -100 and do not count. ``train_size``, ``validation_size``
    and ``test_size`` cap the number of utterances of each split (null: all), drawn with
    ``split_seed``. ``context_frames`` stacks k neighbouring frames on each side of every frame.
    """
    settings = FeatureSettings(TIMIT_SAMPLE_RATE, features, num_mels, num_mfcc)
    timit_dir = root / "speech" / "timit"
    layout, utterances = list_timit_utterances(timit_dir)
    train_speakers, validation_speakers, test_speakers = split_timit_speakers(
        layout, utterances, split_seed
    )
    by_speaker = {}
    for name, group in (("train", train_speakers), ("validation", validation_speakers),
                        ("test", test_speakers)):
        members = set(group)
        by_speaker[name] = [u for u in utterances if u.speaker in members]

    generator = np.random.default_rng(split_seed)
    selected = {
        name: _take(by_speaker[name], size, generator, f"{name}_size")
        for name, size in (("train", train_size), ("validation", validation_size),
                           ("test", test_size))
    }
    splits = {name: _timit_dataset(items, settings, context_frames)
              for name, items in selected.items()}

    if layout == "ldc":
        variant = (f"TIMIT LDC93S1 at {timit_dir}: {len(train_speakers)} training speakers, "
                   f"50-speaker development set (validation), 24-speaker core test set")
    else:
        variant = (f"NLTK TIMIT sample at {timit_dir} (16 speakers): speaker split with "
                   f"split_seed={split_seed}, validation {', '.join(validation_speakers)}, "
                   f"test {', '.join(test_speakers)}")
    variant += f"; {settings.kind} features, {num_mels} mel bands, context ±{context_frames} frames"
    logger.info(
        "TIMIT (%s): %d/%d/%d utterances, %d/%d/%d frames", layout,
        *(len(splits[n]) for n in ("train", "validation", "test")),
        *(splits[n].num_frames for n in ("train", "validation", "test")),
    )
    return DataSplits(
        train=splits["train"],
        validation=splits["validation"],
        test=splits["test"],
        num_classes=len(TIMIT_CLASSES),
        model_kwargs={"num_features": splits["train"].num_features, "frame_level": True},
        variant=variant,
    )


# ---------------------------------------------------------------------------------------------
# Free Spoken Digit Dataset
# ---------------------------------------------------------------------------------------------

FSDD_SAMPLE_RATE = 8000
FSDD_SPLITS = ("official", "leave_one_speaker_out")
FSDD_TEST_REPETITIONS = range(0, 5)  # the official split: repetitions 0-4 test, 5-49 train
_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


class FsddRecording(NamedTuple):
    path: Path
    digit: int
    speaker: str
    repetition: int


def list_fsdd_recordings(fsdd_dir: Path) -> list[FsddRecording]:
    """List ``recordings/{digit}_{speaker}_{index}.wav`` sorted by file name."""
    folder = fsdd_dir / "recordings"
    recordings = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            match = _FSDD_NAME.fullmatch(path.name)
            if match:
                recordings.append(
                    FsddRecording(path, int(match.group(1)), match.group(2), int(match.group(3)))
                )
    if not recordings:
        raise FileNotFoundError(
            f"Free Spoken Digit Dataset not found: expected {folder}/{{digit}}_{{speaker}}_"
            f"{{index}}.wav (8 kHz WAV, e.g. 7_jackson_32.wav) from github.com/Jakobovski/"
            f"free-spoken-digit-dataset. Set data_root=... or the {DATA_ENV_VAR} environment "
            f"variable to the folder that contains speech/fsdd."
        )
    return recordings


def _utterance_dataset(paths: list[Path], labels: list[int], settings: FeatureSettings,
                       context_frames: int, speakers: list[str],
                       class_names: Sequence[str]) -> SpeechFeatureDataset:
    features = _decode_features(tuple(paths), settings)
    return SpeechFeatureDataset(
        features, torch.tensor(labels, dtype=torch.long), context_frames,
        utterance_ids=[p.stem for p in paths], speakers=speakers, class_names=class_names,
    )


@register_dataset("fsdd")
def load_fsdd(
    root: Path,
    split: str = "official",
    test_speaker: str | None = None,
    train_size: int | None = None,
    validation_size: int = 300,
    test_size: int | None = None,
    split_seed: int = 0,
    features: str = "log_mel",
    num_mels: int = 40,
    num_mfcc: int = 13,
    context_frames: int = 0,
) -> DataSplits:
    """Free Spoken Digit Dataset (Jackson et al., v1.0.10): spoken digits 0-9 at 8 kHz.

    ``split="official"`` follows the dataset's README: repetitions 0-4 of every speaker and
    digit are the test set (300 recordings), repetitions 5-49 the training data (2,700).
    ``split="leave_one_speaker_out"`` tests on every recording of ``test_speaker`` (500 with the
    six speakers of v1.0.10) and trains on the other speakers. In both, ``validation_size``
    recordings are drawn from the training data with ``split_seed``, and ``train_size`` and
    ``test_size`` cap the other two splits (null: all).
    """
    if split not in FSDD_SPLITS:
        raise ValueError(f"unknown dataset.split {split!r} for fsdd: expected one of "
                         f"{', '.join(FSDD_SPLITS)}")
    recordings = list_fsdd_recordings(root / "speech" / "fsdd")
    speakers = sorted({r.speaker for r in recordings})
    if split == "official":
        if test_speaker is not None:
            raise ValueError("dataset.test_speaker is only used with "
                             "dataset.split=leave_one_speaker_out; set it to null")
        pool = [r for r in recordings if r.repetition not in FSDD_TEST_REPETITIONS]
        test = [r for r in recordings if r.repetition in FSDD_TEST_REPETITIONS]
    else:
        if test_speaker not in speakers:
            raise ValueError(
                f"dataset.test_speaker={test_speaker!r} is not an FSDD speaker: choose one of "
                f"{', '.join(speakers)}"
            )
        pool = [r for r in recordings if r.speaker != test_speaker]
        test = [r for r in recordings if r.speaker == test_speaker]

    if not isinstance(validation_size, int) or not 0 <= validation_size < len(pool):
        raise ValueError(f"dataset.validation_size must be an integer in [0, {len(pool)}), "
                         f"got {validation_size!r}")
    generator = np.random.default_rng(split_seed)
    order = generator.permutation(len(pool))
    validation = [pool[i] for i in np.sort(order[:validation_size])]
    train = [pool[i] for i in np.sort(order[validation_size:])]
    train = _take(train, train_size, generator, "train_size")
    test = _take(test, test_size, generator, "test_size")

    settings = FeatureSettings(FSDD_SAMPLE_RATE, features, num_mels, num_mfcc)
    class_names = [str(d) for d in range(10)]

    def dataset(items: list[FsddRecording]) -> SpeechFeatureDataset:
        return _utterance_dataset([r.path for r in items], [r.digit for r in items], settings,
                                  context_frames, [r.speaker for r in items], class_names)

    splits = {"train": dataset(train), "validation": dataset(validation), "test": dataset(test)}
    described = ("official split (repetitions 0-4 test)" if split == "official"
                 else f"leave-one-speaker-out, test speaker {test_speaker}")
    variant = (f"FSDD at {root / 'speech' / 'fsdd'} ({len(recordings)} recordings, "
               f"{len(speakers)} speakers): {described}, validation drawn with "
               f"split_seed={split_seed}; {settings.kind} features, {num_mels} mel bands")
    logger.info("FSDD: %d/%d/%d recordings", *(len(splits[n]) for n in splits))
    return DataSplits(
        train=splits["train"], validation=splits["validation"], test=splits["test"],
        num_classes=10,
        model_kwargs={"num_features": splits["train"].num_features, "frame_level": False},
        variant=variant,
    )


# ---------------------------------------------------------------------------------------------
# Speech Commands
# ---------------------------------------------------------------------------------------------

SPEECH_COMMANDS_SAMPLE_RATE = 16000
SPEECH_COMMANDS_VERSIONS = ("v0.01", "v0.02")


def list_speech_commands(speech_dir: Path, version: str, download: bool) -> dict[str, list[tuple[Path, str]]]:
    """Return ``{"training" | "validation" | "testing": [(path, word), ...]}``.

    The split follows ``validation_list.txt`` and ``testing_list.txt`` through
    ``torchaudio.datasets.SPEECHCOMMANDS`` (which downloads the archive when ``download`` is
    true). Only its file lists are used: its ``__getitem__`` decodes with ``torchaudio.load``,
    which needs the separate torchcodec package.
    """
    from torchaudio.datasets import SPEECHCOMMANDS

    if version not in SPEECH_COMMANDS_VERSIONS:
        raise ValueError(f"unknown dataset.version {version!r} for speech_commands: expected one "
                         f"of {', '.join(SPEECH_COMMANDS_VERSIONS)}")
    archive_dir = speech_dir / "SpeechCommands"
    folder = archive_dir / f"speech_commands_{version}"
    if not download:
        missing = [name for name in ("validation_list.txt", "testing_list.txt")
                   if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"Speech Commands {version} not found: expected {folder}/<word>/<hash>_nohash_"
                f"<n>.wav with {' and '.join(missing)} beside the word folders. Pass "
                f"dataset.download=true to download it (2.3 GB for v0.02), or set data_root=... "
                f"or the {DATA_ENV_VAR} environment variable to the folder that contains "
                f"speech/SpeechCommands."
            )
    speech_dir.mkdir(parents=True, exist_ok=True)
    lists = {}
    for subset in ("training", "validation", "testing"):
        dataset = SPEECHCOMMANDS(str(speech_dir), url=f"speech_commands_{version}",
                                 download=download, subset=subset)
        items = []
        for index in range(len(dataset)):
            relative_path, _, word, _, _ = dataset.get_metadata(index)
            items.append((archive_dir / relative_path, word))
        lists[subset] = items
    return lists


@register_dataset("speech_commands")
def load_speech_commands(
    root: Path,
    version: str = "v0.02",
    download: bool = False,
    words: Sequence[str] | None = None,
    train_size: int | None = None,
    validation_size: int | None = None,
    test_size: int | None = None,
    split_seed: int = 0,
    features: str = "log_mel",
    num_mels: int = 40,
    num_mfcc: int = 13,
    context_frames: int = 0,
) -> DataSplits:
    """Speech Commands (Warden 2018, arXiv 1804.03209): one-second clips of spoken words.

    Reads (or, with ``download=true``, downloads to) ``<root>/speech/SpeechCommands``. The task
    is classification into every word of the training split (35 in v0.02), or into ``words``
    when given (clips of other words are dropped). The split is the official one of
    ``validation_list.txt`` and ``testing_list.txt``. ``train_size``, ``validation_size`` and
    ``test_size`` cap each split (null: all), drawn with ``split_seed``. Clips shorter than one
    second keep their length, and batches are padded with a mask.
    """
    lists = list_speech_commands(root / "speech", version, download)
    found = sorted({word for _, word in lists["training"]})
    if words is None:
        class_names = found
    else:
        class_names = list(words)
        unknown = sorted(set(class_names) - set(found))
        if unknown:
            raise ValueError(f"dataset.words lists {', '.join(map(repr, unknown))}, which are not in the "
                             f"training split; known words are {', '.join(found)}")
    if not class_names:
        raise FileNotFoundError(f"Speech Commands at {root / 'speech' / 'SpeechCommands'} has no "
                                f"training clips in <word>/<hash>_nohash_<n>.wav")
    class_ids = {word: index for index, word in enumerate(class_names)}
    settings = FeatureSettings(SPEECH_COMMANDS_SAMPLE_RATE, features, num_mels, num_mfcc)

    generator = np.random.default_rng(split_seed)
    splits = {}
    for name, subset, size in (("train", "training", train_size),
                               ("validation", "validation", validation_size),
                               ("test", "testing", test_size)):
        items = [(path, word) for path, word in lists[subset] if word in class_ids]
        items = _take(items, size, generator, f"{name}_size")
        splits[name] = _utterance_dataset(
            [p for p, _ in items], [class_ids[w] for _, w in items], settings, context_frames,
            [p.stem.split("_nohash_")[0] for p, _ in items], class_names,
        )
    logger.info("Speech Commands %s: %d/%d/%d clips, %d words", version,
                *(len(splits[n]) for n in ("train", "validation", "test")), len(class_names))
    variant = (f"Speech Commands {version} at {root / 'speech' / 'SpeechCommands'}: official "
               f"validation/testing lists, {len(class_names)} words; {settings.kind} features, "
               f"{num_mels} mel bands")
    return DataSplits(
        train=splits["train"], validation=splits["validation"], test=splits["test"],
        num_classes=len(class_names),
        model_kwargs={"num_features": splits["train"].num_features, "frame_level": False},
        variant=variant,
    )


def split_summary(data: DataSplits, hop_ms: float = 10.0) -> "pandas.DataFrame":
    """Return one row per split: utterances, speakers, frames, audio minutes and the majority class.

    ``majority share`` is the accuracy of always predicting the most frequent class of that
    split: over labelled frames for frame targets, over utterances otherwise. ``hop_ms`` is the
    frame hop the features were computed with (10 ms by default).
    """
    import pandas as pd

    rows = {}
    for name, split in (("train", data.train), ("validation", data.validation),
                        ("test", data.test)):
        labels = split.targets[split.targets >= 0]
        counts = torch.bincount(labels, minlength=max(len(split.class_names), 1))
        majority = int(counts.argmax()) if len(labels) else 0
        rows[name] = {
            "utterances": len(split),
            "speakers": len(set(split.speakers)),
            "frames": split.num_frames,
            "minutes": split.num_frames * hop_ms / 60000,
            "labelled frames" if split.frame_level else "labelled utterances": len(labels),
            "majority class": split.class_names[majority] if split.class_names else majority,
            "majority share": float(counts[majority]) / max(len(labels), 1),
        }
    return pd.DataFrame(rows).T
