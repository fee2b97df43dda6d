"""Text data and models: forward-mode AD through attention, the IMDB loader on the real copy,
tokenizers, pretrained loading, and short command-line runs on real reviews."""

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fwdbwd_lib.data import load_data
from fwdbwd_lib.data.text import (
    IMDB_SPLIT_SIZE, TokenizedTextDataset, clean_review, read_imdb, read_imdb_csv,
    read_imdb_folder, train_bpe_tokenizer,
)
from fwdbwd_lib.gradients import (
    ForwardGradient, directional_derivative, draw_tangents, model_outputs, tangent_seed,
)
from fwdbwd_lib.losses import cross_entropy
from fwdbwd_lib.models.text import TextCNN, build_roberta, forward_ad_status

REPOSITORY = Path(__file__).resolve().parents[1]
CONFIGS = REPOSITORY / "fwdbwd_lib" / "configs"


@pytest.fixture(autouse=True)
def _tokenizer_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FWDBWD_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _padded_batch(lengths=(12, 7, 9, 4), vocab_size=50, pad_token_id=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.full((len(lengths), max(lengths)), pad_token_id)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.randint(3, vocab_size, (length,), generator=generator)
        attention_mask[row, :length] = 1
    targets = torch.tensor([0, 1, 1, 0][: len(lengths)])
    return {"input_ids": input_ids, "attention_mask": attention_mask}, targets


def _tiny_roberta(attn_implementation="eager", dropout=0.3):
    return build_roberta(num_classes=2, vocab_size=50, max_length=16, size="tiny",
                         hidden_size=16, num_heads=2, intermediate_size=32, dropout=dropout,
                         attn_implementation=attn_implementation).double()


# ---------------------------------------------------------------------------------------------
# Forward-mode AD through the models
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("train_mode", [True, False])
def test_roberta_jvp_matches_backprop_on_padded_batch(attn_implementation, train_mode):
    model = _tiny_roberta(attn_implementation)
    model.train(train_mode)
    inputs, targets = _padded_batch()
    generator = torch.Generator().manual_seed(3)
    tangents = {name: torch.randn(p.shape, generator=generator, dtype=p.dtype)
                for name, p in model.named_parameters()}

    # The same global RNG state for both passes gives the same dropout masks.
    rng_state = torch.get_rng_state()
    loss, jvp, _ = directional_derivative(model, cross_entropy, inputs, targets, tangents)
    torch.set_rng_state(rng_state)
    model.zero_grad()
    reference_loss = cross_entropy(model_outputs(model, inputs), targets)
    reference_loss.backward()
    expected = sum((p.grad * tangents[name]).sum() for name, p in model.named_parameters())

    assert torch.allclose(loss, reference_loss.detach(), rtol=1e-10)
    assert torch.allclose(jvp, expected, rtol=1e-8, atol=1e-10)
    if train_mode:
        # Dropout really is on: another mask changes the loss.
        assert not torch.allclose(cross_entropy(model_outputs(model, inputs), targets), loss)


def test_roberta_forward_gradient_method_is_jvp_times_tangent():
    model = _tiny_roberta(dropout=0.3).train()
    inputs, targets = _padded_batch()
    rng_state = torch.get_rng_state()
    ForwardGradient(num_tangents=1, seed=5)(model, cross_entropy, inputs, targets, step=7)
    # Regenerate the step's tangent from its seed and recompute ∇L·v by backprop.
    generator = torch.Generator().manual_seed(tangent_seed(5, 7, 0))
    parameters = dict(model.named_parameters())
    tangents = draw_tangents(parameters, "gaussian", generator)
    estimate = {name: p.grad.clone() for name, p in parameters.items()}
    model.zero_grad()
    torch.set_rng_state(rng_state)
    cross_entropy(model_outputs(model, inputs), targets).backward()
    jvp = sum((p.grad * tangents[name]).sum() for name, p in parameters.items())
    for name in parameters:
        assert torch.allclose(estimate[name], jvp * tangents[name], rtol=1e-8, atol=1e-12), name


@pytest.mark.parametrize("build", [lambda: _tiny_roberta(dropout=0.0),
                                   lambda: TextCNN(2, 50, embedding_dim=8, channels=6).double()])
def test_padding_does_not_change_the_scores(build):
    model = build().eval()
    inputs, _ = _padded_batch()
    scores = model_outputs(model, inputs)
    for row, length in enumerate(inputs["attention_mask"].sum(1).tolist()):
        alone = {k: v[row : row + 1, :length] for k, v in inputs.items()}
        assert torch.allclose(model_outputs(model, alone)[0], scores[row], atol=1e-10)


def test_text_cnn_jvp_matches_backprop():
    model = TextCNN(2, 50, embedding_dim=8, channels=6, dropout=0.3).double().train()
    inputs, targets = _padded_batch()
    tangents = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    rng_state = torch.get_rng_state()
    _, jvp, _ = directional_derivative(model, cross_entropy, inputs, targets, tangents)
    torch.set_rng_state(rng_state)
    cross_entropy(model_outputs(model, inputs), targets).backward()
    expected = sum((p.grad * tangents[n]).sum() for n, p in model.named_parameters())
    assert torch.allclose(jvp, expected, rtol=1e-8)


def test_model_argument_errors():
    with pytest.raises(ValueError, match="model.size"):
        build_roberta(size="huge")
    with pytest.raises(ValueError, match="attn_implementation"):
        build_roberta(attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="divisible"):
        build_roberta(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="kernel_size"):
        TextCNN(kernel_size=4)


# ---------------------------------------------------------------------------------------------
# Pretrained checkpoints and tokenizers
# ---------------------------------------------------------------------------------------------

def test_pretrained_checkpoint_is_loaded(tmp_path):
    source = build_roberta(num_classes=2, vocab_size=60, max_length=16, size="tiny")
    source.save_pretrained(tmp_path / "checkpoint")
    loaded = build_roberta(num_classes=3, vocab_size=60, max_length=16,
                           pretrained=str(tmp_path / "checkpoint"), attn_implementation="eager")
    embeddings = "roberta.embeddings.word_embeddings.weight"
    assert torch.equal(loaded.state_dict()[embeddings], source.state_dict()[embeddings])
    assert loaded.classifier.out_proj.out_features == 3
    assert loaded.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="token embeddings"):
        build_roberta(vocab_size=61, max_length=16, pretrained=str(tmp_path / "checkpoint"))
    with pytest.raises(ValueError, match="16 token positions"):
        build_roberta(vocab_size=60, max_length=64, pretrained=str(tmp_path / "checkpoint"))
    with pytest.raises(ValueError, match="dataset.tokenizer=bpe"):
        build_roberta(vocab_size=60, max_length=16, pretrained=str(tmp_path / "checkpoint"),
                      tokenizer="bpe")
    with pytest.raises(ValueError, match="not found"):
        build_roberta(pretrained=str(tmp_path / "missing"))


def test_bpe_tokenizer_round_trip_and_cache(tmp_path):
    texts = ["A fine film, with a twist I did not see coming.", "Dull. Two hours lost!"] * 50
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, cache_dir=tmp_path)
    ids = tokenizer.encode(texts[:2], max_length=64)
    assert all(row[0] == 0 and row[-1] == 2 for row in ids)           # <s> ... </s>
    assert [tokenizer.decode(row) for row in ids] == texts[:2]
    assert max(len(row) for row in tokenizer.encode(texts[:2], max_length=5)) == 5
    assert len(list(tmp_path.glob("imdb-bpe-300-*.json"))) == 1
    again = train_bpe_tokenizer(texts, vocab_size=300, cache_dir=tmp_path)
    assert again.encode(texts[:2], 64) == ids
    train_bpe_tokenizer(texts[:10], vocab_size=300, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("imdb-bpe-300-*.json"))) == 2      # other texts, other key


def test_pretrained_tokenizer_folder_and_missing_name(tmp_path):
    from transformers import PreTrainedTokenizerFast

    texts = ["A fine film.", "Dull and long."] * 20
    bpe = train_bpe_tokenizer(texts, vocab_size=280, cache_dir=tmp_path)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=bpe.backend, bos_token="<s>",
                                      eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                      mask_token="<mask>")
    wrapped.save_pretrained(tmp_path / "tokenizer")
    from fwdbwd_lib.data.text import load_pretrained_tokenizer

    loaded = load_pretrained_tokenizer(str(tmp_path / "tokenizer"))
    assert loaded.pad_token_id == 1
    assert loaded.encode(texts[:1], 32) == bpe.encode(texts[:1], 32)
    with pytest.raises(ValueError, match="not found"):
        load_pretrained_tokenizer(str(tmp_path / "no-such-tokenizer"))


# ---------------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------------

def test_dataset_pads_per_batch_with_mask():
    dataset = TokenizedTextDataset([[0, 5, 2], [0, 5, 6, 7, 2]], np.array([0, 1]), pad_token_id=1)
    inputs, labels = dataset.__getitems__([0, 1])
    assert inputs["input_ids"].tolist() == [[0, 5, 2, 1, 1], [0, 5, 6, 7, 2]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert labels.tolist() == [0, 1]
    assert dataset.__getitems__([0])[0]["input_ids"].shape == (1, 3)


def test_real_imdb_counts_balance_and_disjoint_splits(data_root):
    raw, variant = read_imdb(data_root)
    assert "CSV" in variant
    for split in ("train", "test"):
        assert len(raw[split].texts) == IMDB_SPLIT_SIZE
        assert np.bincount(raw[split].labels).tolist() == [12_500, 12_500]
    assert raw["train"].texts[0].startswith("Story of a man who has unnatural feelings")
    assert raw["train"].source_files[1] == "aclImdb/train/pos/0_9.txt"
    assert not set(raw["train"].source_files) & set(raw["test"].source_files)

    data = load_data("imdb", data_root, train_size=400, validation_size=200, test_size=300,
                     max_length=64, vocab_size=500)
    assert (len(data.train), len(data.validation), len(data.test)) == (400, 200, 300)
    for split in (data.train, data.validation, data.test):
        assert split.labels.float().mean() == 0.5
        assert int(split.lengths.max()) <= 64
    train, validation, test = (set(s.texts) for s in (data.train, data.validation, data.test))
    assert not train & validation
    assert not train & test
    assert not validation & test
    assert not set(data.train.source_files) & set(data.validation.source_files)
    assert data.model_kwargs == {"vocab_size": 500, "max_length": 64, "pad_token_id": 1,
                                 "tokenizer": "bpe"}
    assert "<br" not in " ".join(data.train.texts)
    # A fixed split seed selects the same reviews.
    again = load_data("imdb", data_root, train_size=400, validation_size=200, test_size=300,
                      max_length=64, vocab_size=500)
    assert again.validation.source_files == data.validation.source_files


def test_deduplication_removes_every_shared_text(data_root):
    data = load_data("imdb", data_root, validation_size=0, test_size=None, train_size=50,
                     max_length=8, vocab_size=300)
    assert len(data.test) == 24_678
    raw, _ = read_imdb(data_root)
    train_texts = {clean_review(t) for t in raw["train"].texts}
    assert not train_texts & set(data.test.texts)
    assert len(set(data.test.texts)) == len(data.test.texts)


def _write_imdb_copies(root: Path, reviews: dict[str, list[tuple[str, int]]]) -> None:
    """Write the same reviews as CSV parts (root/csv/imdb) and as an archive tree (root/tree)."""
    csv_folder = root / "csv" / "imdb"
    csv_folder.mkdir(parents=True)
    for split, rows in reviews.items():
        with gzip.open(csv_folder / f"{split}-00000-of-00001.csv.gz", "wt", newline="",
                       encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        for index, (text, label) in enumerate(rows):
            folder = root / "tree" / "imdb" / "aclImdb" / split / ("pos" if label else "neg")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{index // 2}_{8 if label else 2}.txt").write_text(text, encoding="utf-8")


def test_archive_tree_and_csv_give_the_same_reviews(tmp_path):
    reviews = {split: [(f"{split} review {i}, \"quoted\"<br />line", i % 2) for i in range(12)]
               for split in ("train", "test")}
    _write_imdb_copies(tmp_path, reviews)
    from_csv = read_imdb_csv(tmp_path / "csv" / "imdb", "train")
    from_tree = read_imdb_folder(tmp_path / "tree" / "imdb" / "aclImdb", "train")
    assert from_csv.texts == from_tree.texts == [text for text, _ in reviews["train"]]
    assert from_csv.labels.tolist() == from_tree.labels.tolist()
    _, variant = read_imdb(tmp_path / "tree")
    assert "official aclImdb archive" in variant


def test_missing_imdb_and_bad_sizes(tmp_path, data_root):
    with pytest.raises(FileNotFoundError, match="FWDBWD_DATA") as error:
        load_data("imdb", tmp_path)
    assert "aclImdb" in str(error.value)
    assert "dataset.download=true" in str(error.value)
    with pytest.raises(ValueError, match="dataset.train_size"):
        load_data("imdb", data_root, train_size=30_000)
    with pytest.raises(ValueError, match="dataset.max_length"):
        load_data("imdb", data_root, max_length=1)
    with pytest.raises(ValueError, match="dataset.tokenizer=bpe"):
        load_data("imdb", data_root, train_size=10, validation_size=10, test_size=10,
                  tokenizer=str(tmp_path / "no-tokenizer"))


# ---------------------------------------------------------------------------------------------
# Command-line runs on real reviews
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["roberta", "text_cnn"])
def test_cli_trains_on_real_imdb(tmp_path, data_root, model):
    runs_dir = tmp_path / "runs"
    command = [
        sys.executable, "-m", "fwdbwd_lib.train", "--config_path",
        str(CONFIGS / "imdb_roberta.yaml"), "--quiet", "epochs=1", "device_id=-1",
        f"runs_dir={runs_dir}", f"data_root={data_root}", "method=backprop,forward_gradient",
        f"model_name={model}", f"model={model}", "batch_size=16", "dataset.train_size=32",
        "dataset.validation_size=16", "dataset.test_size=16", "dataset.max_length=64",
        "dataset.vocab_size=400",
    ]
    if model == "roberta":
        command.append("model.size=tiny")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "FWDBWD_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env=environment, cwd=REPOSITORY)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = sorted(p for p in runs_dir.iterdir() if p.is_dir())
    assert len(run_dirs) == 2
    for run_dir in run_dirs:
        assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["steps"] == 2
        assert 0.0 <= summary["test_accuracy"] <= 1.0
        environment_record = json.loads((run_dir / "environment.json").read_text())
        assert "byte-level BPE" in environment_record["dataset_variant"]
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["dataset"]["tokenizer"] == "bpe"


def test_forward_ad_status_reports_every_text_model():
    inputs, targets = _padded_batch(vocab_size=300)
    rows = forward_ad_status(inputs, targets, vocab_size=300, max_length=16, tokenizer="bpe")
    assert [row["model"] for row in rows[::2]] == ["roberta (sdpa)", "roberta (eager)", "text_cnn"]
    for row in rows:
        assert row["status"] == "ok", row
        assert row["relative_error"] < 1e-4, row
