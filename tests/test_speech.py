"""Speech data, models and losses: forward-mode AD, padding, TIMIT/FSDD/Speech Commands loading,
and short command-line runs on the real FSDD and TIMIT-sample copies."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from torch import nn

from fwdbwd_lib.data import load_data
from fwdbwd_lib.data.speech import (
    TIMIT_CLASSES, TIMIT_CORE_TEST_SPEAKERS, TIMIT_DEVELOPMENT_SPEAKERS, TIMIT_61_TO_39,
    FeatureSettings, SpeechFeatureDataset, compute_features, frame_phone_targets, read_audio,
    read_phone_segments, split_summary, stack_context,
)
from fwdbwd_lib.gradients import Backprop, directional_derivative
from fwdbwd_lib.losses import cross_entropy, frame_cross_entropy
from fwdbwd_lib.models.speech import (
    SpeechCNN, SpeechRNN, SpeechTransformer, forward_ad_status, masked_mean, reverse_padded,
)

REPOSITORY = Path(__file__).resolve().parents[1]
CONFIGS = REPOSITORY / "fwdbwd_lib" / "configs"

# The published 61 → 39 folding (Lee and Hon 1989), written out independently of the library:
# groups of phones that share a class, every other phone its own class, q removed.
MERGED = {
    "aa": {"aa", "ao"}, "ah": {"ah", "ax", "ax-h"}, "er": {"er", "axr"}, "hh": {"hh", "hv"},
    "ih": {"ih", "ix"}, "l": {"l", "el"}, "m": {"m", "em"}, "n": {"n", "en", "nx"},
    "ng": {"ng", "eng"}, "sh": {"sh", "zh"}, "uw": {"uw", "ux"},
    "sil": {"pcl", "tcl", "kcl", "bcl", "dcl", "gcl", "h#", "pau", "epi"},
}
SINGLETONS = {"ae", "aw", "ay", "b", "ch", "d", "dh", "dx", "eh", "ey", "f", "g", "iy", "jh", "k",
              "ow", "oy", "p", "r", "s", "t", "th", "uh", "v", "w", "y", "z"}


def _padded_batch(lengths=(9, 5, 7), num_features=6, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(len(lengths), max(lengths), num_features, generator=generator,
                           dtype=dtype)
    mask = torch.arange(max(lengths)).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return features, mask


MODELS = {
    "cnn": lambda f, frame: SpeechCNN(4, f, frame, channels=8, num_layers=3, kernel_size=3,
                                      dropout=0.3),
    "gru": lambda f, frame: SpeechRNN(4, f, frame, hidden_size=5, num_layers=2, dropout=0.3),
    "gru_plain": lambda f, frame: SpeechRNN(4, f, frame, hidden_size=5, dropout=0.3,
                                            implementation="plain"),
    "lstm": lambda f, frame: SpeechRNN(4, f, frame, cell="lstm", hidden_size=5, dropout=0.3),
    "lstm_plain": lambda f, frame: SpeechRNN(4, f, frame, cell="lstm", hidden_size=5,
                                             dropout=0.3, implementation="plain"),
    "transformer": lambda f, frame: SpeechTransformer(4, f, frame, d_model=8, num_heads=2,
                                                      num_layers=2, ffn_size=16, dropout=0.3),
}


# ---------------------------------------------------------------------------------------------
# Models: forward-mode AD and padding
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("frame_level", [False, True], ids=["utterance", "frames"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_jvp_matches_backprop_dot_tangent(name, frame_level):
    """∇L·v from forward-mode AD equals backprop's gradient dotted with v, with dropout on."""
    torch.manual_seed(0)
    model = MODELS[name](6, frame_level).double().train()
    features, mask = _padded_batch()
    inputs = {"features": features, "mask": mask}
    if frame_level:
        targets = torch.randint(0, 4, mask.shape)
        targets[~mask] = -100
    else:
        targets = torch.randint(0, 4, (3,))
    generator = torch.Generator().manual_seed(1)
    tangents = {n: torch.randn(p.shape, generator=generator, dtype=p.dtype)
                for n, p in model.named_parameters()}

    torch.manual_seed(5)  # the same dropout masks in both passes
    model.zero_grad(set_to_none=True)
    Backprop()(model, frame_cross_entropy, inputs, targets)
    expected = sum((p.grad * tangents[n]).sum() for n, p in model.named_parameters())
    torch.manual_seed(5)
    loss, derivative, outputs = directional_derivative(model, frame_cross_entropy, inputs,
                                                       targets, tangents)

    assert torch.isfinite(loss)
    assert outputs.shape == ((3, 9, 4) if frame_level else (3, 4))
    relative_error = abs(derivative - expected) / abs(expected)
    assert relative_error < 1e-4, f"jvp {derivative.item()} vs grad·v {expected.item()}"


def test_float32_lstm_has_forward_ad_on_cpu():
    """float32 nn.LSTM on the CPU runs through oneDNN without forward AD; the model avoids it."""
    model = SpeechRNN(4, 6, cell="lstm", hidden_size=5).train()
    features, mask = _padded_batch(dtype=torch.float32)
    tangents = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    targets = torch.tensor([0, 1, 2])
    torch.manual_seed(5)  # the same dropout masks in both passes
    model.zero_grad(set_to_none=True)
    Backprop()(model, cross_entropy, {"features": features, "mask": mask}, targets)
    expected = sum((p.grad * tangents[n]).sum() for n, p in model.named_parameters())
    torch.manual_seed(5)
    _, derivative, _ = directional_derivative(
        model, cross_entropy, {"features": features, "mask": mask}, targets, tangents
    )
    assert abs(derivative - expected) / abs(expected) < 1e-3
    assert torch.backends.mkldnn.enabled  # the workaround restores the global flag


def test_forward_ad_status_reports_every_model():
    rows = forward_ad_status(dtype=torch.float64)
    assert len(rows) == 12  # 6 formulations × (utterance, frames)
    assert all(row["status"] == "ok" for row in rows), [r["status"] for r in rows]
    assert max(row["relative_error"] for row in rows) < 1e-8


@pytest.mark.parametrize("frame_level", [False, True], ids=["utterance", "frames"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_padding_does_not_change_outputs(name, frame_level):
    """An utterance gets the same logits alone and inside a longer padded batch (eval mode)."""
    torch.manual_seed(0)
    model = MODELS[name](6, frame_level).double().eval()
    features, mask = _padded_batch()
    batched = model(features=features, mask=mask)
    for row, length in enumerate(mask.sum(1).tolist()):
        alone = model(features=features[row : row + 1, :length],
                      mask=torch.ones(1, length, dtype=torch.bool))
        expected = batched[row, :length] if frame_level else batched[row]
        torch.testing.assert_close(alone[0], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_plain_rnn_equals_native(cell):
    torch.manual_seed(0)
    native = SpeechRNN(4, 6, True, cell=cell, hidden_size=5, num_layers=2).double().eval()
    plain = SpeechRNN(4, 6, True, cell=cell, hidden_size=5, num_layers=2,
                      implementation="plain").double().eval()
    plain.load_state_dict(native.state_dict())
    features, mask = _padded_batch()
    torch.testing.assert_close(plain(features=features, mask=mask),
                               native(features=features, mask=mask), rtol=1e-10, atol=1e-10)


def test_bidirectional_rnn_equals_packed_gru():
    """Reversing within lengths gives the outputs of a packed bidirectional nn.GRU."""
    torch.manual_seed(0)
    model = SpeechRNN(4, 6, True, hidden_size=5, num_layers=1).double().eval()
    reference = nn.GRU(6, 5, batch_first=True, bidirectional=True).double()
    forward, backward = model.layers[0]
    with torch.no_grad():
        for suffix, source in (("", forward), ("_reverse", backward)):
            for weight in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(reference, f"{weight}_l0{suffix}").copy_(getattr(source, f"{weight}_l0"))
    features, mask = _padded_batch()
    lengths = mask.sum(1)
    packed = nn.utils.rnn.pack_padded_sequence(features, lengths, batch_first=True,
                                               enforce_sorted=False)
    expected, _ = nn.utils.rnn.pad_packed_sequence(reference(packed)[0], batch_first=True)

    keep = mask.unsqueeze(-1).double()
    outputs = []
    for rnn, reverse in ((forward, False), (backward, True)):
        x = reverse_padded(features, lengths) if reverse else features
        y = rnn(x)[0]
        outputs.append(reverse_padded(y, lengths) if reverse else y)
    torch.testing.assert_close(torch.cat(outputs, -1) * keep, expected * keep)


def test_reverse_padded_flips_valid_frames_only():
    x = torch.arange(12.0).view(2, 6, 1)
    reversed_x = reverse_padded(x, torch.tensor([6, 4]))
    assert reversed_x[0, :, 0].tolist() == [5, 4, 3, 2, 1, 0]
    assert reversed_x[1, :, 0].tolist() == [9, 8, 7, 6, 10, 11]
    assert torch.equal(reverse_padded(reversed_x, torch.tensor([6, 4])), x)


def test_masked_mean_ignores_padding():
    frames = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(frames, torch.tensor([[True, True, False]])).item() == 2.0


def test_frame_cross_entropy_skips_ignored_frames():
    logits = torch.randn(2, 4, 5)
    targets = torch.tensor([[1, 2, -100, -100], [0, -100, 4, 3]])
    valid = targets >= 0
    expected = torch.nn.functional.cross_entropy(logits[valid], targets[valid])
    torch.testing.assert_close(frame_cross_entropy(logits, targets), expected)


def test_model_rejects_wrong_feature_size():
    model = SpeechCNN(4, 6)
    with pytest.raises(ValueError, match=r"\(batch, time, 6\)"):
        model(features=torch.randn(2, 5, 7), mask=torch.ones(2, 5, dtype=torch.bool))


def test_invalid_model_options_raise():
    with pytest.raises(ValueError, match="model.cell"):
        SpeechRNN(4, 6, cell="rnn")
    with pytest.raises(ValueError, match="model.implementation"):
        SpeechRNN(4, 6, implementation="cudnn")
    with pytest.raises(ValueError, match="divisible"):
        SpeechTransformer(4, 6, d_model=10, num_heads=3)
    with pytest.raises(ValueError, match="odd"):
        SpeechCNN(4, 6, kernel_size=4)


# ---------------------------------------------------------------------------------------------
# Features and the padded dataset
# ---------------------------------------------------------------------------------------------

def test_stack_context_orders_neighbours():
    frames = torch.arange(8.0).view(4, 2)  # frame t = [2t, 2t + 1]
    stacked = stack_context(frames, 1)
    assert stacked.shape == (4, 6)
    assert stacked[0].tolist() == [0, 1, 0, 1, 2, 3]  # the first frame repeats at the edge
    assert stacked[2].tolist() == [2, 3, 4, 5, 6, 7]
    assert stacked[3].tolist() == [4, 5, 6, 7, 6, 7]


def test_features_are_normalised_per_utterance():
    settings = FeatureSettings(16000)
    waveform = torch.randn(16000) * torch.linspace(0.1, 1.0, 16000)
    features = compute_features(waveform, settings)
    assert features.shape == (settings.num_frames(16000), 40) == (101, 40)
    torch.testing.assert_close(features.mean(0), torch.zeros(40), atol=1e-4, rtol=0)
    torch.testing.assert_close(features.std(0, unbiased=False), torch.ones(40), atol=1e-3, rtol=0)
    mfcc = compute_features(waveform, FeatureSettings(16000, kind="mfcc"))
    assert mfcc.shape == (101, 13)


def test_feature_settings_reject_bad_values():
    with pytest.raises(ValueError, match="log_mel, mfcc"):
        FeatureSettings(16000, kind="spectrogram")
    with pytest.raises(ValueError, match="num_mfcc"):
        FeatureSettings(16000, kind="mfcc", num_mels=10, num_mfcc=13)


def test_dataset_pads_targets_and_mask():
    features = [torch.randn(3, 2), torch.randn(5, 2)]
    targets = [torch.tensor([1, 2, 3]), torch.tensor([0, 0, 1, -100, 4])]
    dataset = SpeechFeatureDataset(features, targets, context_frames=1)
    inputs, batch_targets = dataset.__getitems__([0, 1])
    assert inputs["features"].shape == (2, 5, 6)
    assert inputs["mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch_targets[0].tolist() == [1, 2, 3, -100, -100]
    assert batch_targets[1].tolist() == [0, 0, 1, -100, 4]
    assert torch.equal(inputs["features"][0, 3:], torch.zeros(2, 6))
    assert dataset.num_features == 6
    assert dataset.num_frames == 8
    item, item_targets = dataset[0]
    assert item["features"].shape == (3, 6)
    assert item_targets.tolist() == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# TIMIT
# ---------------------------------------------------------------------------------------------

def test_folding_table_matches_published_mapping():
    expected = {phone: folded for folded, phones in MERGED.items() for phone in phones}
    expected.update({phone: phone for phone in SINGLETONS})
    expected["q"] = None
    assert len(expected) == 61
    assert TIMIT_61_TO_39 == expected
    assert len(TIMIT_CLASSES) == 39
    assert set(TIMIT_CLASSES) == set(MERGED) | SINGLETONS


def test_speaker_lists_are_disjoint_and_complete():
    assert len(set(TIMIT_CORE_TEST_SPEAKERS)) == 24
    assert len(set(TIMIT_DEVELOPMENT_SPEAKERS)) == 50
    assert not set(TIMIT_CORE_TEST_SPEAKERS) & set(TIMIT_DEVELOPMENT_SPEAKERS)
    # The core set has 2 male and 1 female speaker per dialect region.
    assert sum(s.startswith("f") for s in TIMIT_CORE_TEST_SPEAKERS) == 8


def test_frame_targets_follow_phone_boundaries(tmp_path):
    path = tmp_path / "utterance.phn"
    path.write_text("0 100 h#\n100 250 ix\n250 300 q\n300 400 zh\n")
    targets = frame_phone_targets(read_phone_segments(path), num_frames=9, hop_length=50)
    sil, ih, sh = (TIMIT_CLASSES.index(c) for c in ("sil", "ih", "sh"))
    # Frame t is centred on sample 50·t; sample 400 lies past the last segment.
    assert targets.tolist() == [sil, sil, ih, ih, ih, -100, sh, sh, -100]


def test_phone_file_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.phn"
    path.write_text("0 100 h#\n100 200 xx\n")
    with pytest.raises(ValueError, match=r"bad.phn:2: unknown phone 'xx'"):
        read_phone_segments(path)
    path.write_text("0 100\n")
    with pytest.raises(ValueError, match=r"bad.phn:1: expected"):
        read_phone_segments(path)


def test_timit_sample_sphere_file_is_read(data_root):
    path = data_root / "speech" / "timit" / "dr1-fvmh0" / "si836.wav"
    info = soundfile.info(str(path))
    assert info.format == "NIST"
    waveform = read_audio(path, 16000)
    assert waveform.shape == (68813,)
    peak = waveform.abs().max().item() * 32768
    assert round(peak) == 8163  # the header's sample_max; sample_min is -6058


def test_timit_sample_phone_boundaries_in_samples(data_root):
    segments = read_phone_segments(data_root / "speech" / "timit" / "dr1-fvmh0" / "si836.phn")
    assert segments[:3] == [(0, 8529, "h#"), (8529, 8946, "n"), (8946, 11094, "ow")]
    assert segments[-1].phone == "h#"
    assert all(a.end == b.start for a, b in zip(segments, segments[1:]))
    targets = frame_phone_targets(segments, 1 + 68813 // 160, 160)
    assert targets[53].item() == TIMIT_CLASSES.index("sil")  # centre 8480 < 8529
    assert targets[54].item() == TIMIT_CLASSES.index("n")   # centre 8640 in [8529, 8946)
    assert targets[56].item() == TIMIT_CLASSES.index("ow")  # centre 8960 in [8946, 11094)


def test_timit_sample_split(data_root):
    data = load_data("timit", data_root)
    splits = {"train": data.train, "validation": data.validation, "test": data.test}
    speakers = {name: set(split.speakers) for name, split in splits.items()}
    assert [len(speakers[n]) for n in splits] == [12, 2, 2]
    assert [len(splits[n]) for n in splits] == [96, 16, 16]  # 8 SI/SX utterances per speaker
    assert not speakers["train"] & speakers["validation"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["validation"] & speakers["test"]
    for name in ("validation", "test"):
        assert sorted(s[0] for s in speakers[name]) == ["f", "m"]
    assert not any("/sa" in u for split in splits.values() for u in split.utterance_ids)
    assert data.num_classes == 39
    assert data.model_kwargs == {"num_features": 440, "frame_level": True}

    inputs, targets = data.train.__getitems__([0, 1])
    assert inputs["features"].shape[:2] == targets.shape
    assert (targets[~inputs["mask"]] == -100).all()
    all_targets = data.train.targets
    assert (all_targets >= -100).all()
    assert (all_targets < 39).all()
    assert (all_targets == -100).any()  # the q frames

    again = load_data("timit", data_root)
    other = load_data("timit", data_root, split_seed=1)
    assert again.test.speakers == data.test.speakers
    assert set(other.test.speakers) != set(data.test.speakers)


def test_split_summary_of_timit_sample(data_root):
    summary = split_summary(load_data("timit", data_root))
    assert summary.loc["train", "utterances"] == 96
    assert summary.loc["test", "speakers"] == 2
    assert (summary["majority class"] == "sil").all()
    assert (summary["labelled frames"] < summary["frames"]).all()  # q frames are not labelled
    assert ((summary["majority share"] > 0.15) & (summary["majority share"] < 0.35)).all()
    # The sample has 490 s of audio; the 128 SI/SX sentences are about 391 s of it.
    assert 6.4 < summary["minutes"].sum() < 6.6


def _write_sphere(path: Path, num_samples: int = 1600) -> None:
    samples = (np.sin(np.arange(num_samples) / 7.0) * 3000).astype(np.int16)
    soundfile.write(str(path), samples, 16000, format="NIST", subtype="PCM_16")


def _write_ldc_speaker(folder: Path, names=("SI1027", "SA1")) -> None:
    folder.mkdir(parents=True)
    for name in names:
        _write_sphere(folder / f"{name}.WAV")
        (folder / f"{name}.PHN").write_text("0 400 h#\n400 1200 aa\n1200 1600 h#\n")


def test_timit_ldc_layout_splits(tmp_path):
    corpus = tmp_path / "speech" / "timit" / "TIMIT"
    for speaker in ("FCJF0", "MDPK0", "MRJO0"):
        _write_ldc_speaker(corpus / "TRAIN" / "DR1" / speaker)
    for speaker in TIMIT_DEVELOPMENT_SPEAKERS + TIMIT_CORE_TEST_SPEAKERS:
        _write_ldc_speaker(corpus / "TEST" / "DR2" / speaker.upper())
    _write_ldc_speaker(corpus / "TEST" / "DR3" / "MXYZ0")  # a test speaker in neither list
    # Some copies hold RIFF conversions named <utterance>.WAV.wav beside the .PHN files.
    converted = corpus / "TRAIN" / "DR8" / "MBCG0"
    converted.mkdir(parents=True)
    soundfile.write(str(converted / "SX57.WAV.wav"), np.zeros(1600, dtype=np.int16), 16000)
    (converted / "SX57.PHN").write_text("0 1600 h#\n")

    data = load_data("timit", tmp_path, context_frames=0)
    assert sorted(set(data.train.speakers)) == ["fcjf0", "mbcg0", "mdpk0", "mrjo0"]
    assert set(data.validation.speakers) == set(TIMIT_DEVELOPMENT_SPEAKERS)
    assert set(data.test.speakers) == set(TIMIT_CORE_TEST_SPEAKERS)
    assert [len(data.train), len(data.validation), len(data.test)] == [4, 50, 24]  # SA dropped
    assert data.model_kwargs["num_features"] == 40
    assert "LDC93S1" in data.variant
    assert data.train.frame_targets(0).tolist()[:4] == [TIMIT_CLASSES.index("sil")] * 3 + [
        TIMIT_CLASSES.index("aa")]

    limited = load_data("timit", tmp_path, validation_size=10, test_size=5)
    assert [len(limited.validation), len(limited.test)] == [10, 5]


def test_timit_ldc_layout_without_core_speaker_raises(tmp_path):
    corpus = tmp_path / "speech" / "timit"
    _write_ldc_speaker(corpus / "train" / "dr1" / "fcjf0")
    _write_ldc_speaker(corpus / "test" / "dr1" / "mdab0")
    with pytest.raises(FileNotFoundError, match="lacks test speakers"):
        load_data("timit", tmp_path)


def test_timit_missing_names_setting_and_layouts(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_data("timit", tmp_path)
    message = str(error.value)
    assert "FWDBWD_DATA" in message
    assert "data_root" in message
    assert "TRAIN|TEST/DR1..DR8" in message
    assert "dr<region>-<sex><speaker>" in message


# ---------------------------------------------------------------------------------------------
# FSDD
# ---------------------------------------------------------------------------------------------

def test_fsdd_official_split_counts(data_root):
    data = load_data("fsdd", data_root)
    assert len(data.train) + len(data.validation) == 2700
    assert (len(data.train), len(data.validation), len(data.test)) == (2400, 300, 300)
    repetitions = {int(u.rsplit("_", 1)[1]) for u in data.test.utterance_ids}
    assert repetitions == set(range(5))
    train_repetitions = {int(u.rsplit("_", 1)[1]) for u in data.train.utterance_ids}
    assert min(train_repetitions) == 5
    assert not set(data.train.utterance_ids) & set(data.validation.utterance_ids)
    assert data.num_classes == 10
    assert data.model_kwargs == {"num_features": 40, "frame_level": False}
    assert torch.bincount(data.test.targets, minlength=10).tolist() == [30] * 10


def test_fsdd_leave_one_speaker_out_counts(data_root):
    data = load_data("fsdd", data_root, split="leave_one_speaker_out", test_speaker="theo",
                     validation_size=250)
    assert (len(data.train), len(data.validation), len(data.test)) == (2250, 250, 500)
    assert set(data.test.speakers) == {"theo"}
    assert "theo" not in set(data.train.speakers) | set(data.validation.speakers)


def test_fsdd_invalid_options_raise(data_root):
    with pytest.raises(ValueError, match="not an FSDD speaker"):
        load_data("fsdd", data_root, split="leave_one_speaker_out", test_speaker="alice")
    with pytest.raises(ValueError, match="only used with"):
        load_data("fsdd", data_root, test_speaker="theo")
    with pytest.raises(ValueError, match="official, leave_one_speaker_out"):
        load_data("fsdd", data_root, split="random")


def test_fsdd_missing_names_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"FWDBWD_DATA.*speech/fsdd|speech/fsdd.*FWDBWD"):
        load_data("fsdd", tmp_path)


# ---------------------------------------------------------------------------------------------
# Speech Commands, on a generated tree in the archive's layout
# ---------------------------------------------------------------------------------------------

def _write_wav(path: Path, num_samples: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.random.default_rng(seed).normal(0, 0.1, num_samples).astype(np.float32)
    soundfile.write(str(path), samples, 16000, subtype="PCM_16")


def make_speech_commands_tree(root: Path) -> Path:
    """Write 3 words × 6 clips (2 validation, 1 test each), background noise and the lists."""
    folder = root / "speech" / "SpeechCommands" / "speech_commands_v0.02"
    validation, testing = [], []
    for word_index, word in enumerate(("no", "up", "yes")):
        for clip in range(6):
            relative = f"{word}/{clip:08x}_nohash_0.wav"
            _write_wav(folder / relative, 16000 if clip % 2 else 12000, 10 * word_index + clip)
            if clip in (0, 1):
                validation.append(relative)
            elif clip == 2:
                testing.append(relative)
    _write_wav(folder / "_background_noise_" / "white_noise.wav", 32000, 99)
    (folder / "validation_list.txt").write_text("\n".join(validation) + "\n")
    (folder / "testing_list.txt").write_text("\n".join(testing) + "\n")
    return folder


def test_speech_commands_official_lists(tmp_path):
    make_speech_commands_tree(tmp_path)
    data = load_data("speech_commands", tmp_path)
    assert (len(data.train), len(data.validation), len(data.test)) == (9, 6, 3)
    assert data.num_classes == 3
    assert data.train.class_names == ["no", "up", "yes"]
    assert torch.bincount(data.train.targets).tolist() == [3, 3, 3]
    assert data.model_kwargs == {"num_features": 40, "frame_level": False}
    assert sorted(data.train.lengths.unique().tolist()) == [76, 101]  # 0.75 s and 1 s clips

    only_two = load_data("speech_commands", tmp_path, words=["yes", "no"], train_size=4)
    assert only_two.num_classes == 2
    assert len(only_two.train) == 4
    assert len(only_two.validation) == 4


def test_speech_commands_missing_and_bad_words(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.download=true") as error:
        load_data("speech_commands", tmp_path)
    assert "FWDBWD_DATA" in str(error.value)
    make_speech_commands_tree(tmp_path)
    with pytest.raises(ValueError, match="'left'"):
        load_data("speech_commands", tmp_path, words=["left"])


# ---------------------------------------------------------------------------------------------
# Command-line runs
# ---------------------------------------------------------------------------------------------

def _run_cli(config: str, runs_dir: Path, data_root: Path, *overrides: str) -> list[dict]:
    command = [sys.executable, "-m", "fwdbwd_lib.train", "--config_path", str(CONFIGS / config),
               "--quiet", "epochs=1", "device_id=-1", f"runs_dir={runs_dir}",
               f"data_root={data_root}", "method=backprop,forward_gradient", *overrides]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env=environment, cwd=REPOSITORY)
    assert result.returncode == 0, result.stderr[-3000:]
    records = []
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        status = json.loads((run_dir / "status.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        records.append({"method": config["method"], "status": status["status"], **summary})
    return records


def _check_runs(records: list[dict]) -> None:
    assert len(records) == 2
    assert {r["method"] for r in records} == {"backprop", "forward_gradient"}
    for record in records:
        assert record["status"] == "finished"
        assert 0.0 <= record["test_accuracy"] <= 1.0
        assert record["steps"] == 2


def test_cli_trains_fsdd_cnn(tmp_path, data_root):
    _check_runs(_run_cli("fsdd_cnn.yaml", tmp_path / "runs", data_root, "batch_size=32",
                         "dataset.train_size=64", "dataset.validation_size=32",
                         "dataset.test_size=32"))


def test_cli_trains_timit_gru(tmp_path, data_root):
    records = _run_cli("timit_gru.yaml", tmp_path / "runs", data_root, "batch_size=4",
                       "dataset.train_size=8", "dataset.validation_size=4", "dataset.test_size=4")
    _check_runs(records)


def test_cli_trains_speech_commands_on_generated_tree(tmp_path):
    make_speech_commands_tree(tmp_path / "data")
    _check_runs(_run_cli("speech_commands_cnn.yaml", tmp_path / "runs", tmp_path / "data",
                         "batch_size=4", "dataset.train_size=8"))
