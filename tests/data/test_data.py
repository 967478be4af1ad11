"""The user's own data and model through the CLI: every file kind trains, every bad file is refused
with its file and row before anything is written, the embedded splits are exactly the old ones, and
hub ids out of reach fail within seconds."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model, tiny_config
from transformers import AutoTokenizer, BertModel

from adarank.checks import load_config
from adarank.cli import main
from adarank.config import ConfigError, DataConfig
from adarank.data import DataError, carve, load_splits, load_task
from adarank.data.tasks import pack_blocks
from adarank.training.evaluate import macro_f1

STEPS = ["train.max_steps=2", "train.batch_size=4", "train.eval_batch_size=8", "wandb.mode=disabled"]
WORDS = {"good": "positive", "bad": "negative", "fine": "neutral"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A BERT encoder WITHOUT a classification head (as a user's base model is: the head is new) and
    a tiny Llama causal LM, both with MiniLM's tokenizer."""
    from adarank.data import default_model_path

    root = tmp_path_factory.mktemp("models")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    BertModel(tiny_config(False, vocab_size=tokenizer.vocab_size, max_position_embeddings=128)).save_pretrained(
        root / "bert"
    )
    tokenizer.save_pretrained(root / "bert")
    save_tiny_model(root / "llama", llama=True)
    return {"bert": root / "bert", "llama": root / "llama"}


def reviews(n: int = 60) -> list[dict]:
    """Rows whose sentiment word decides the label; 12 authors."""
    names = list(WORDS)
    return [
        {"review": f"the film was {names[i % 3]} number {i}", "sentiment": WORDS[names[i % 3]], "author": f"a{i % 12}"}
        for i in range(n)
    ]


def write_csv(path: Path, rows: list[dict]) -> Path:
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["train", *args, *STEPS])
    return code, capsys.readouterr().err


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


# ---------------------------------------------------------------- the embedded tasks stay as they were


def _digest(texts: list[str], labels: list[int]) -> str:
    joined = "\x1e".join(f"{y}\x1f{x}" for x, y in zip(texts, labels, strict=True))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


# (rows, positives, digest of the texts and label ids in order), recorded from the hand-written
# pandas loader this loader replaced (commit d14bbe8), before it was removed.
RT_SPLITS = {
    "train": (10325, 5876, "8538b79d2379ba1b"),
    "validation": (1245, 754, "679149d8d79c15d2"),
    "test": (1182, 738, "4d5014e7133a7451"),
}
BBC_SPLITS = {
    "train": (1700, 3259, "11e3d64ecb351fcd"),
    "validation": (212, 407, "fb0c22942830f822"),
    "test": (215, 412, "b4f7edea3baaa21e"),
}


@pytest.mark.parametrize(("dataset", "expected"), [("rotten_tomatoes", RT_SPLITS), ("bbc_news", BBC_SPLITS)])
def test_embedded_splits_are_the_old_ones_exactly(dataset: str, expected: dict) -> None:
    splits = load_splits(dataset)
    found = {name: (len(t), sum(y), _digest(t, y)) for name, (t, y) in splits.items()}
    assert found == expected
    rt = load_task(DataConfig())
    assert rt.label_names == ["negative", "positive"]  # fresh = 1, rotten = 0, as before


def test_the_run_seed_never_moves_the_test_set(tmp_path: Path) -> None:
    file = write_csv(tmp_path / "r.csv", reviews())
    cfg = DataConfig(dataset=str(file), text_field="review", label_field="sentiment")
    a, b = load_task(cfg), load_task(cfg)
    other = load_task(DataConfig(**{**cfg.__dict__, "split_seed": 7}))
    assert a.splits["test"].texts == b.splits["test"].texts
    assert a.splits["test"].texts != other.splits["test"].texts
    assert [len(a.splits[s].texts) for s in ("train", "validation", "test")] == [48, 6, 6]


def test_groups_never_straddle_splits(tmp_path: Path) -> None:
    rows = reviews()
    task = load_task(
        DataConfig(
            dataset=str(write_csv(tmp_path / "r.csv", rows)),
            text_field="review",
            label_field="sentiment",
            group_field="author",
        )
    )
    author = {r["review"]: r["author"] for r in rows}
    groups = {s: {author[t] for t in split.texts} for s, split in task.splits.items()}
    assert not groups["train"] & groups["validation"] and not groups["train"] & groups["test"]
    assert not groups["validation"] & groups["test"]
    # 12 authors: int(0.8 * 12) = 9 to train, int(0.9 * 12) - 9 = 1 to validation, 2 to test
    assert [len(groups[s]) for s in ("train", "validation", "test")] == [9, 1, 2]


def test_carve_cuts_where_the_fractions_say() -> None:
    parts = carve(507, [0.1, 0.1], seed=20230301)
    assert [len(p) for p in parts] == [405, 51, 51]  # int(0.8 * 507), int(0.9 * 507) - 405, the rest
    assert sorted(i for p in parts for i in p) == list(range(507))
    assert [len(p) for p in carve(10, [0.25], seed=0)] == [7, 3]


def test_text_files_are_documents(tmp_path: Path) -> None:
    single = tmp_path / "one.txt"
    single.write_text("first doc\nits second line\n\nsecond doc\n\n\nthird doc\n")
    task = load_task(
        DataConfig(dataset=str(single), format="language_modeling", validation_fraction=0.33, test_fraction=0.33)
    )
    documents = sorted(t for s in task.splits.values() for t in s.texts)
    assert documents == ["first doc\nits second line", "second doc", "third doc"]
    for i in range(4):
        (tmp_path / f"many{i}.txt").write_text(f"document {i}\n\nstill document {i}\n")
    task = load_task(
        DataConfig(
            dataset=str(tmp_path / "many*.txt"),
            format="language_modeling",
            validation_fraction=0.25,
            test_fraction=0.25,
        )
    )
    documents = sorted(t for s in task.splits.values() for t in s.texts)
    assert documents == [f"document {i}\n\nstill document {i}" for i in range(4)]


# ---------------------------------------------------------------- each file kind trains


def test_csv_with_groups_trains_a_new_head_and_exports_label_names(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_csv(tmp_path / "reviews.csv", reviews())
    out = tmp_path / "run"
    code, err = train(
        [
            f"model.name_or_path={models['bert']}",
            f"data.dataset={file}",
            "data.text_field=review",
            "data.label_field=sentiment",
            "data.group_field=author",
            f"output_dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    found = metrics(out)
    assert {"test_accuracy", "validation_accuracy", "test_macro_f1", "eval_accuracy"} <= set(found)
    assert found["eval_accuracy"] == found["test_accuracy"]
    adapter = json.loads((out / "adapter" / "adarank_adapter.json").read_text())
    assert adapter["trained_parameters"] == ["classifier.bias", "classifier.weight"]  # the new head
    assert adapter["base_model"]["label_names"] == ["negative", "neutral", "positive"]  # sorted strings
    merged = tmp_path / "merged"
    assert main(["export", str(out), "--format", "merged", "--out", str(merged)]) == 0
    config = json.loads((merged / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    peft = tmp_path / "peft"
    assert main(["export", str(out), "--format", "peft", "--out", str(peft)]) == 0
    assert "negative, neutral, positive" in (peft / "README.md").read_text()


def test_jsonl_string_labels_follow_label_names(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_jsonl(tmp_path / "r.jsonl", [{"text": r["review"], "label": r["sentiment"]} for r in reviews()])
    out = tmp_path / "run"
    code, err = train(
        [
            f"model.name_or_path={models['bert']}",
            f"data.dataset={file}",
            f"output_dir={out}",
            "data.label_names=[positive,neutral,negative]",
        ],
        capsys,
    )
    assert code == 0, err
    adapter = json.loads((out / "adapter" / "adarank_adapter.json").read_text())
    assert adapter["base_model"]["label_names"] == ["positive", "neutral", "negative"]
    task = load_task(DataConfig(dataset=str(file), label_names=["positive", "neutral", "negative"]))
    words = {0: "good", 1: "fine", 2: "bad"}
    assert all(words[y] in t for t, y in zip(task.splits["train"].texts, task.splits["train"].labels, strict=True))


def test_parquet_pairs_train(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datasets import Dataset

    rows = reviews()
    pairs = {
        "premise": [r["review"] for r in rows],
        "hypothesis": [f"it is {r['sentiment']}" for r in rows],
        "gold": [i % 2 for i in range(len(rows))],
    }
    Dataset.from_dict(pairs).to_parquet(str(tmp_path / "pairs.parquet"))
    out = tmp_path / "run"
    code, err = train(
        [
            f"model.name_or_path={models['bert']}",
            f"data.dataset={tmp_path / 'pairs.parquet'}",
            "data.text_field=premise",
            "data.text_pair_field=hypothesis",
            "data.label_field=gold",
            f"output_dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads((out / "adapter" / "adarank_adapter.json").read_text())["base_model"]["label_names"] == ["0", "1"]


def test_saved_dataset_dict_keeps_its_own_splits(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "neu", "pos"])})
    ids = {"negative": 0, "neutral": 1, "positive": 2}
    rows = reviews(45)
    part = {"text": [r["review"] for r in rows], "label": [ids[r["sentiment"]] for r in rows]}
    split = {
        name: Dataset.from_dict({k: v[a:b] for k, v in part.items()}, features=features)
        for name, (a, b) in {"train": (0, 30), "dev": (30, 39), "test": (39, 45)}.items()
    }
    DatasetDict(split).save_to_disk(str(tmp_path / "saved"))
    out = tmp_path / "run"
    code, err = train(
        [f"model.name_or_path={models['bert']}", f"data.dataset={tmp_path / 'saved'}", f"output_dir={out}"], capsys
    )
    assert code == 0, err
    assert metrics(out)["test_examples"] == 6  # the saved test split, not a carved one
    assert json.loads((out / "adapter" / "adarank_adapter.json").read_text())["base_model"]["label_names"] == [
        "neg",
        "neu",
        "pos",
    ]
    task = load_task(DataConfig(dataset=str(tmp_path / "saved")))
    assert [len(task.splits[s].texts) for s in ("train", "validation", "test")] == [30, 9, 6]  # "dev" is validation


def test_text_file_as_language_modeling(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("\n\n".join(f"note {i}: the cat sat on mat {i}.\nsecond line of note {i}." for i in range(40)))
    out = tmp_path / "run"
    code, err = train(
        [
            f"model.name_or_path={models['llama']}",
            f"data.dataset={file}",
            "data.max_length=16",
            "data.format=language_modeling",
            "adapter.target_modules=all-linear",
            f"output_dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    found = metrics(out)
    for key in ("validation_loss", "test_loss", "validation_perplexity", "test_perplexity"):
        assert found[key] > 0
    assert found["validation_perplexity"] == pytest.approx(float(torch.tensor(found["validation_loss"]).exp()))
    assert "test_accuracy" not in found and "eval_accuracy" not in found
    assert found["validation_perplexity_before"] > 1000  # a random 2-layer model knows nothing


def test_generation_on_a_users_csv(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write_csv(tmp_path / "reviews.csv", reviews())
    out = tmp_path / "run"
    code, err = train(
        [
            f"model.name_or_path={models['llama']}",
            f"data.dataset={file}",
            "data.format=generation",
            "data.text_field=review",
            "data.label_field=sentiment",
            "adapter.target_modules=all-linear",
            f"output_dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    found = metrics(out)
    assert 0 <= found["test_accuracy"] <= 1 and found["test_answer_loss"] > 0 and "eval_accuracy_before" in found


# ---------------------------------------------------------------- bad data: one clear error, nothing written


def _refused(args: list[str], capsys: pytest.CaptureFixture[str], out: Path) -> str:
    code, err = train([*args, f"output_dir={out}"], capsys)
    assert code == 2, err
    assert not out.exists(), "a refused run must not create its run directory"
    return " ".join(err.split())


def test_bad_data_is_named_by_file_and_row(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bert = f"model.name_or_path={models['bert']}"
    out = tmp_path / "run"
    missing = tmp_path / "nope.csv"
    assert f"data.dataset `{missing}` does not exist." in _refused([bert, f"data.dataset={missing}"], capsys, out)

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine", "label": 1}\n{"text": "unterminated\n')
    assert f"data.dataset: cannot read `{broken}` as json" in _refused([bert, f"data.dataset={broken}"], capsys, out)

    file = write_csv(tmp_path / "r.csv", reviews())
    err = _refused([bert, f"data.dataset={file}", "data.label_field=sentiment"], capsys, out)
    assert (
        f"data.text_field `text` is not a column of `{file}` (train split); "
        "its columns: `review`, `sentiment`, `author`." in err
    )

    rows = reviews()
    rows[4]["sentiment"] = ""
    rows[7]["review"] = ""
    file = write_csv(tmp_path / "holes.csv", rows)
    err = _refused([bert, f"data.dataset={file}", "data.text_field=review", "data.label_field=sentiment"], capsys, out)
    assert f"train split: missing text (column `review`) at `{file}` row 8; fill in or remove those rows." in err
    assert f"train split: missing label (column `sentiment`) at `{file}` row 5; fill in or remove those rows." in err

    numbers = write_jsonl(tmp_path / "n.jsonl", [{"text": i if i == 3 else f"t{i}", "label": i % 2} for i in range(30)])
    err = _refused([bert, f"data.dataset={numbers}"], capsys, out)
    assert (
        f"train split: column `text` holds a non-text value (3) at `{numbers}` row 4; check that `text` is the "
        "text column, or make those values text."
    ) in err

    tiny = write_jsonl(tmp_path / "tiny.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(5)])
    err = _refused([bert, f"data.dataset={tiny}"], capsys, out)
    assert (
        f"the validation split of `{tiny}` is empty (too few rows to carve it); raise data.validation_fraction" in err
    )


def test_a_test_label_unseen_in_train_is_refused(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datasets import Dataset, DatasetDict

    train_part = Dataset.from_dict({"text": [f"t{i}" for i in range(20)], "label": ["a", "b"] * 10})
    test_part = Dataset.from_dict({"text": ["x", "y", "z"], "label": ["a", "c", "b"]})
    DatasetDict({"train": train_part, "validation": train_part, "test": test_part}).save_to_disk(str(tmp_path / "d"))
    err = _refused([f"model.name_or_path={models['bert']}", f"data.dataset={tmp_path / 'd'}"], capsys, tmp_path / "run")
    assert (
        f"test split: label(s) `c` that train never has at `{tmp_path / 'd'} [test]` row 2; the model cannot "
        "learn them: fix those rows, or list every label in data.label_names." in err
    )
    err = _refused(
        [f"model.name_or_path={models['bert']}", f"data.dataset={tmp_path / 'd'}", "data.label_names=[a,b]"],
        capsys,
        tmp_path / "run",
    )
    assert (
        f"test split: label `c` is not one of the label names (a, b) at `{tmp_path / 'd'} [test]` row 2; "
        "add it to data.label_names, or fix those rows."
    ) in err


def test_an_encoder_is_refused_for_language_modeling_before_loading(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "d.txt"
    file.write_text("a\n\nb\n\nc\n")
    err = _refused(
        [f"model.name_or_path={models['bert']}", f"data.dataset={file}", "data.format=language_modeling"],
        capsys,
        tmp_path / "run",
    )
    assert "is a `bert` model, not a decoder: data.format generation and language_modeling need a causal LM" in err


# ---------------------------------------------------------------- hub ids


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again on exit: a connection is refused at once


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "closed endpoint"])
def test_an_uncached_hub_id_fails_within_seconds(how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        reason = "HF_HUB_OFFLINE=1 is set"
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        endpoint = f"http://127.0.0.1:{_closed_port()}"
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        reason = f"{endpoint} cannot be reached"
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.name_or_path=someorg/some-model"], check_model=True)
    assert time.perf_counter() - start < 10  # the hub libraries alone retry for ~25 s
    (problem,) = err.value.problems
    assert problem.startswith("model.name_or_path `someorg/some-model` is a hub model id, it is not in the local cache")
    assert reason in problem and "`hf download someorg/some-model`" in problem
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        load_task(DataConfig(dataset="someorg/some-data"))
    assert time.perf_counter() - start < 10
    assert reason in str(err.value) and "`hf download someorg/some-data --repo-type dataset`" in str(err.value)


def test_an_uncached_hub_model_is_reported_beside_a_data_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every problem at once: a missing data file does not hide that the hub model cannot be fetched."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.name_or_path=someorg/some-model", "data.format=generation",
                           f"data.dataset={tmp_path / 'missing.jsonl'}"], check_model=True)  # fmt: skip
    data, model = err.value.problems
    assert data.startswith(f"data.dataset `{tmp_path / 'missing.jsonl'}` does not exist.")
    assert model.startswith("model.name_or_path `someorg/some-model` is a hub model id, it is not in the local cache")
    assert "`hf download someorg/some-model`" in model


def test_paths_that_look_local_must_exist() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.name_or_path=./my-model", "data.dataset=~/no/such/file.csv", "data.subset=x"])
    assert err.value.problems[0].startswith("data.dataset `~/no/such/file.csv` does not exist.")
    assert "data.subset `x` applies to hub datasets only; remove it for `~/no/such/file.csv`." in err.value.problems
    assert err.value.problems[-1].startswith("model.name_or_path `./my-model` is not an existing folder")


# ---------------------------------------------------------------- dtype, checkpointing, metrics


def test_bfloat16_base_keeps_adapters_head_and_scores_in_float32(models: dict[str, Path]) -> None:
    from adarank.training.setup import prepare

    cfg = load_config(None, [f"model.name_or_path={models['bert']}", "model.dtype=bfloat16"])
    _, model, allocator = prepare(cfg, ["a", "b"])
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["bert.encoder.layer.0.attention.self.query.base.weight"] == torch.bfloat16
    assert dtypes["bert.encoder.layer.0.attention.self.query.left_vectors"] == torch.float32
    assert dtypes["classifier.weight"] == torch.float32
    batch = {"input_ids": torch.tensor([[101, 2000, 102]]), "labels": torch.tensor([1])}
    loss = model(**batch).loss
    assert loss.dtype == torch.float32
    loss.backward()
    allocator.step(1)
    assert allocator.scores and all(t.dtype == torch.float32 for s in allocator.scores.values() for t in s.values())


def test_gradient_checkpointing_gives_the_same_gradients(models: dict[str, Path], tmp_path: Path) -> None:
    """train.gradient_checkpointing in the engine: the model recomputes activations, and one optimizer
    step ends where it does without (the same gradients, up to the recomputation's rounding)."""
    from adarank.data import load_task
    from adarank.data.tasks import GenerationCollator, build_datasets, model_columns
    from adarank.training.engine import train_loop
    from adarank.training.setup import loop_config, prepare

    file = tmp_path / "d.txt"
    file.write_text("\n\n".join(f"document {i} says something about {i * 7}" for i in range(30)))
    found = []
    for on in (False, True):
        cfg = load_config(
            None,
            [
                f"model.name_or_path={models['llama']}",
                f"data.dataset={file}",
                "data.max_length=16",
                "data.format=language_modeling",
                "train.max_steps=1",
                "train.batch_size=4",
                "adapter.target_modules=all-linear",
                "budget.schedule=constant",
                "budget.init_rank=2",
                "budget.target_rank=2",
                f"train.gradient_checkpointing={str(on).lower()}",
            ],
        )
        task = load_task(cfg.data)
        tokenizer, model, allocator = prepare(cfg)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        rows = model_columns(build_datasets(tokenizer, cfg, task)["train"])
        model, _ = train_loop(
            model, allocator, rows, GenerationCollator(tokenizer.pad_token_id), loop_config(cfg, "none")
        )
        assert model.is_gradient_checkpointing is on
        after = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        assert any(not torch.equal(after[n], before[n]) for n in before), "the step moved the adapters"
        found.append(after)
    assert found[0].keys() == found[1].keys() and len(found[0]) == 2 * 7 * 3  # P, lambda, Q of 14 adapters
    for name, value in found[0].items():
        torch.testing.assert_close(found[1][name], value, rtol=1e-5, atol=1e-6)


def test_macro_f1_and_packing_are_exact() -> None:
    import numpy as np

    predicted, gold = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0])
    # class 0: tp 1, fp 1, fn 1 -> 1/2; class 1: tp 1, fp 0, fn 1 -> 2/3; class 2: tp 2, fp 1, fn 0 -> 4/5
    assert macro_f1(predicted, gold) == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)
    documents = [[1, 2], [3, 4, 5], [6, 7]]  # stream 1 2 0 | 3 4 5 | 0 6 7 | 0
    assert pack_blocks(documents, eos_token_id=0, block=3, keep_last=False) == [[1, 2, 0], [3, 4, 5], [0, 6, 7]]
    assert pack_blocks(documents, eos_token_id=0, block=3, keep_last=True) == [[1, 2, 0], [3, 4, 5], [0, 6, 7], [0]]
    assert pack_blocks([[1]], eos_token_id=0, block=3, keep_last=False) == [[1, 0]]  # a lone partial block stays


def test_a_single_label_name_is_a_one_item_list() -> None:
    """`data.label_names=spam` is the list [spam] (as for every list key), so the message is about the
    count, not the type."""
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.label_names=spam"])
    assert err.value.problems == ["data.label_names needs at least two labels for classification or generation."]
    assert load_config(None, ["data.label_names=[ham,spam]"]).data.label_names == ["ham", "spam"]


def _llama_without_eos(folder: Path, config_eos: int | None) -> Path:
    """A tiny Llama whose tokenizer has padding ([PAD]) but no end-of-sequence token, its config naming
    ``config_eos`` (MiniLM's [SEP] is 102) or none."""
    from adarank.data import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    assert tokenizer.eos_token is None and tokenizer.pad_token == "[PAD]"
    save_tiny_model(folder, llama=True)
    tokenizer.save_pretrained(folder)  # over the saved one, which had [SEP] as end-of-sequence
    config = json.loads((folder / "config.json").read_text())
    config["eos_token_id"] = config_eos
    (folder / "config.json").write_text(json.dumps(config))
    if (folder / "generation_config.json").exists():
        (folder / "generation_config.json").unlink()
    return folder


def _notes(tmp_path: Path) -> Path:
    file = tmp_path / "notes.txt"
    file.write_text("\n\n".join(f"note {i}: the cat sat on mat {i}." for i in range(40)))
    return file


LM = ["data.max_length=16", "data.format=language_modeling", "adapter.target_modules=all-linear"]


def test_a_tokenizer_without_eos_takes_the_model_configs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _llama_without_eos(tmp_path / "llama", config_eos=102)
    out = tmp_path / "run"
    code, err = train([f"model.name_or_path={model}", f"data.dataset={_notes(tmp_path)}", *LM, f"output_dir={out}"],
                      capsys)  # fmt: skip
    assert code == 0, err
    assert metrics(out)["validation_perplexity"] > 0


def test_a_tokenizer_and_config_without_eos_are_refused_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _llama_without_eos(tmp_path / "llama", config_eos=None)
    out = tmp_path / "run"
    code, err = train([f"model.name_or_path={model}", f"data.dataset={_notes(tmp_path)}", *LM, f"output_dir={out}"],
                      capsys)  # fmt: skip
    assert code == 2
    assert "the tokenizer has no eos_token and the model config names no valid eos_token_id" in err
    assert f"tok.eos_token = '...'; tok.save_pretrained('{model}')" in err
    assert not out.exists()


def test_a_txt_file_of_one_sentence_per_line_is_one_row_and_says_why(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "lines.txt"
    file.write_text("\n".join(f"sentence {i} about the cat." for i in range(40)))
    code, err = train([f"model.name_or_path={models['llama']}", f"data.dataset={file}", *LM,
                       f"output_dir={tmp_path / 'run'}"], capsys)  # fmt: skip
    assert code == 2
    assert "(a .txt file's rows are its paragraphs: put a blank line between documents)" in err
