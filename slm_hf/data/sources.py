"""Sources: what a `source` argument names (the shipped sample, local files or folders, a Hub dataset), and its
stories loaded, split into train and validation: local files streamed (`StoryFiles`, `TableRows`), a Hub dataset or
a saved one as `datasets.Dataset`s.

`datasets` and `huggingface_hub` are imported inside the functions that read a source: training imports slm_hf.data
for the folder contract only (slm_hf.data.folder), and importing `datasets` costs about a second.
"""

from __future__ import annotations

import fnmatch
import os
import re
from contextlib import contextmanager
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SLMError
from ..tokenization import EOS_TOKEN
from .options import DataOptions
from .stories import StoryFiles, StreamedStories, check_utf8_file

DEFAULT_HUB_DATASET = "roneneldan/TinyStories"
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
SAMPLE_FILES = {"train": "tinystories_train.txt.gz", "val": "tinystories_valid.txt.gz"}
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val")
TEXT_SUFFIXES = (".txt", ".txt.gz")
TABLE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TABLE_READ_ROWS = 2048  # rows of a local table file parsed at a time
_VALIDATION_FILE_NAME = re.compile(r"(?:^|[-_.\s])(?:validation|valid|val|dev)(?:[-_.\s]|$)", re.IGNORECASE)


@dataclass
class Corpus:
    """A loaded source: the stories of each split, as `datasets.Dataset`s with one column, `text`, or as
    `StreamedStories` (local files, streamed) that answer the same calls."""

    train: Any
    val: Any | None
    description: str
    validation: str = ""  # how the validation split was made, for meta.json


@dataclass
class Source:
    """A resolved `source` argument: what it is, and a cheap identity used to decide whether outputs can be reused."""

    kind: str  # "sample", "text" (local .txt files), "table" (local jsonl/json/parquet), "disk" (save_to_disk), "hub"
    name: str
    files: dict[str, list[Path]] = field(default_factory=dict)  # split ("train"/"val"/"all") -> local files

    def identity(self) -> dict[str, Any]:
        """Names, sizes and modification times of the local files (the way `make` decides), or the Hub id."""
        if self.kind == "hub":
            return {"hub": self.name}
        return {split: [[str(path), path.stat().st_size, path.stat().st_mtime_ns] for path in paths]
                for split, paths in self.files.items()}


def resolve_source(source: str, options: DataOptions) -> Source:
    source = str(source)
    if options.data_files is not None and source == "sample":
        raise SLMError("data_files selects files of a Hub dataset; it does not apply to the sample")
    if source == "sample":
        files = {split: [SAMPLE_DIR / name] for split, name in SAMPLE_FILES.items()}
        for paths in files.values():
            if not paths[0].is_file():
                raise SLMError(f"the shipped sample is missing ({paths[0]}); reinstall slm_hf")
        return Source("sample", "sample", files)
    path = Path(source).expanduser()
    if path.exists():
        if options.data_files is not None:
            raise SLMError("data_files selects files of a Hub dataset; for local data pass the file or folder as the "
                           "source")
        return _resolve_local(path.resolve())
    if _looks_like_hub_id(source):
        return Source("hub", source)
    raise SLMError(f"no such file or folder: {source}")


def _looks_like_hub_id(name: str) -> bool:
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?", name):
        return False
    return not name.endswith(TEXT_SUFFIXES + tuple(TABLE_BUILDERS))


def _resolve_local(path: Path) -> Source:
    if path.is_file():
        kind = _file_kind(path)
        if kind is None:
            raise SLMError(f"{path}: unsupported file type; use .txt (stories separated by {EOS_TOKEN} lines), "
                           f".jsonl, .json or .parquet")
        _check_not_empty(path)
        return Source(kind, str(path), {"all": [path]})
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return Source("disk", str(path), {"all": sorted(p for p in path.rglob("*") if p.is_file())})
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    data_files = [p for p in files if _file_kind(p) is not None]
    if not data_files:
        raise SLMError(f"no stories found in {path}: the folder has no .txt, .jsonl, .json or .parquet files")
    kinds = {_file_kind(p) for p in data_files}
    if len(kinds) > 1:
        raise SLMError(f"{path} mixes .txt files with table files (.jsonl/.json/.parquet); put one kind per folder")
    for file in data_files:
        _check_not_empty(file)
    kind = kinds.pop()
    if kind == "text":
        val = [p for p in data_files if _VALIDATION_FILE_NAME.search(_strip_suffix(p.name))]
        train = [p for p in data_files if p not in val]
        if not train:
            raise SLMError(f"{path} has only validation files ({', '.join(p.name for p in val)}); add training files")
        return Source("text", str(path), {"train": train, "val": val} if val else {"all": train})
    return Source("table", str(path), {"all": data_files})


def _file_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if path.suffix.lower() in TABLE_BUILDERS:
        return "table"
    return None


def _strip_suffix(name: str) -> str:
    for suffix in (*TEXT_SUFFIXES, *TABLE_BUILDERS):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _check_not_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise SLMError(f"{path} is empty")


def load_corpus(source: Source, options: DataOptions) -> Corpus:
    """Load the source's stories, cap them at `max_stories`, and hold out validation stories if needed."""
    if source.kind in ("sample", "text"):
        splits = {split: StoryFiles(paths, options.max_stories) for split, paths in source.files.items()}
        description = "the shipped TinyStories sample" if source.kind == "sample" else source.name
        corpus = _corpus_from_splits(splits, description, options)
    elif source.kind == "hub" and _is_text_data_files(options.data_files):
        files = _download_hub_text_files(source.name, options.data_files)
        splits = {split: StoryFiles(paths, options.max_stories) for split, paths in files.items()}
        names = ", ".join(path.name for paths in files.values() for path in paths)
        corpus = _corpus_from_splits(splits, f"{source.name} ({names})", options)
    else:
        corpus = _corpus_from_splits(_load_with_datasets(source, options), source.name, options)
    return corpus


def _corpus_from_splits(splits: dict[str, Any], description: str, options: DataOptions) -> Corpus:
    """Pick the train and validation splits; cap each at max_stories; hold out a fraction if there is no validation."""
    if "train" in splits:
        train = splits["train"]
    elif "all" in splits:
        train = splits["all"]
    elif len(splits) == 1:
        train = next(iter(splits.values()))
    else:
        raise SLMError(f"{description} has no 'train' split (its splits: {', '.join(splits)})")
    val_name = next((name for name in ("val", *VALIDATION_SPLIT_NAMES) if name in splits), None)
    if options.max_stories is not None:
        train = train.select(range(min(len(train), options.max_stories)))
    if len(train) == 0:
        raise SLMError(f"no stories found in {description}")
    if val_name is not None:
        val = splits[val_name]
        if options.max_stories is not None:
            val = val.select(range(min(len(val), options.max_stories)))
        if len(val) == 0:
            raise SLMError(f"no stories found in the validation split of {description}")
        return Corpus(train, val, description, validation=f"the source's validation split ({val_name!r})")
    n_val = max(1, round(len(train) * options.val_fraction))
    if len(train) - n_val < 1:
        raise SLMError(f"{description} has only {len(train)} stor{'y' if len(train) == 1 else 'ies'}: too few to "
                       f"hold out a validation split (it needs at least 2)")
    held_out = np.sort(np.random.default_rng(options.seed).choice(len(train), size=n_val, replace=False))
    keep = np.ones(len(train), dtype=bool)
    keep[held_out] = False
    return Corpus(train.select(np.flatnonzero(keep)), train.select(held_out), description,
                   validation=f"a random {options.val_fraction:g} of the stories (seed {options.seed})")


def _check_table_file(path: Path) -> None:
    if path.suffix.lower() != ".parquet":  # JSON must be UTF-8; parquet stores its strings as UTF-8 by design
        check_utf8_file(path)


def _load_with_datasets(source: Source, options: DataOptions) -> dict[str, Any]:
    """Load a Hub dataset, a local table file or folder, or a saved dataset with the `datasets` library.

    The same `load_dataset(path, data_files=...)` call serves a Hub id and a local folder of parquet/json files
    (`datasets` infers the splits from the file names, as it does on the Hub).
    """
    import datasets

    name = source.name
    try:
        if source.kind == "disk":
            loaded = datasets.load_from_disk(name)
        elif source.kind == "table" and Path(name).is_file():
            _check_table_file(Path(name))
            loaded = datasets.load_dataset(TABLE_BUILDERS[Path(name).suffix.lower()], data_files={"train": name},
                                           streaming=True)
        elif source.kind == "table":  # a local folder of table files: `datasets` infers the splits from the names
            for file in source.files["all"]:
                _check_table_file(file)
            loaded = datasets.load_dataset(name, streaming=True)
        else:  # a Hub id: the same call, downloaded and converted to Arrow once (a pass is then a cheap local read)
            loaded = datasets.load_dataset(name, data_files=options.data_files)
    except SLMError:
        raise
    except Exception as error:  # the datasets library raises many kinds; all mean "could not read this source"
        what = (f"{name!r} is not a local file or folder, and loading it as a Hub dataset failed"
                if source.kind == "hub" else f"cannot read {name}")
        offline = " (HF_HUB_OFFLINE is set)" if source.kind == "hub" and os.environ.get("HF_HUB_OFFLINE") else ""
        raise SLMError(f"{what}{offline}: {type(error).__name__}: {_first_line(error)}") from error
    splits = dict(loaded) if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)) else {
        "train": loaded}
    columns = {split: _text_column(dataset, options.text_column, f"{name} ({split})")
               for split, dataset in splits.items()}
    if source.kind == "table":
        return {split: TableRows(dataset, f"{name} ({split})") for split, dataset in columns.items()}
    return columns


class TableRows(StreamedStories):
    """The `text` column of local table files, streamed by `datasets` (an `IterableDataset`): each pass parses the
    files again, a batch at a time. Converting them to an Arrow file instead, as `datasets` does by default, maps that
    file into memory: every page read stays resident, and memory grows with the corpus (about 1 MB per MB of text).
    Rows keep their positions (an empty or missing text is skipped when tokenized, as with a `datasets.Dataset`)."""

    def __init__(self, dataset, name: str, limit: int | None = None, keep: np.ndarray | None = None):
        super().__init__(limit, keep)
        self.dataset, self.name = dataset, name

    def _read(self) -> Iterator[str | None]:
        try:
            for batch in self.dataset.iter(batch_size=TABLE_READ_ROWS):
                yield from batch["text"]
        except Exception as error:  # a row the first ones did not announce: bad JSON, another type, a missing column
            raise SLMError(f"cannot read {self.name}: {type(error).__name__}: {_first_line(error)}") from error


def _text_column(dataset, column: str, where: str):
    """`dataset` reduced to its text column, renamed `text`; `SLMError` listing the columns if it is missing."""
    import pyarrow
    from datasets import Features, Value

    features = dataset.features
    if features is None:  # a streamed JSON array names no columns up front: its first row shows them
        features = Features.from_arrow_schema(pyarrow.Table.from_pylist(list(dataset.take(1))).schema)
    if column not in features:
        raise SLMError(f"no column {column!r} in {where}; its columns are: {', '.join(features)} "
                       f"(choose one with --text-column)")
    feature = features[column]
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        raise SLMError(f"column {column!r} in {where} holds {feature}, not text (choose another with --text-column)")
    dataset = dataset.select_columns([column])
    return dataset.rename_column(column, "text") if column != "text" else dataset


def _is_text_data_files(data_files) -> bool:
    if data_files is None:
        return False
    patterns = _data_file_patterns(data_files)
    return all(pattern.lower().endswith(TEXT_SUFFIXES) for values in patterns.values() for pattern in values)


def _data_file_patterns(data_files) -> dict[str, list[str]]:
    if isinstance(data_files, str):
        return {"train": [data_files]}
    if isinstance(data_files, (list, tuple)):
        return {"train": list(data_files)}
    return {split: [values] if isinstance(values, str) else list(values) for split, values in data_files.items()}


def _download_hub_text_files(repo_id: str, data_files) -> dict[str, list[Path]]:
    """Download a Hub dataset's TinyStories-format .txt files (patterns may use wildcards) and return local paths."""
    from huggingface_hub import HfApi, hf_hub_download

    patterns = _data_file_patterns(data_files)
    try:
        repo_files = None
        local: dict[str, list[Path]] = {}
        for split, split_patterns in patterns.items():
            names = []
            for pattern in split_patterns:
                if any(char in pattern for char in "*?["):
                    if repo_files is None:
                        repo_files = HfApi().list_repo_files(repo_id, repo_type="dataset")
                    matched = sorted(fnmatch.filter(repo_files, pattern))
                    if not matched:
                        raise SLMError(f"no file in the Hub dataset {repo_id} matches {pattern!r}")
                    names.extend(matched)
                else:
                    names.append(pattern)
            local[split] = [Path(hf_hub_download(repo_id, name, repo_type="dataset")) for name in names]
    except SLMError:
        raise
    except Exception as error:  # network, authentication, missing repo or file: all "could not get the files"
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise SLMError(f"cannot download {data_files!r} from the Hub dataset {repo_id}{offline}: "
                       f"{type(error).__name__}: {_first_line(error)}") from error
    return {("val" if split in VALIDATION_SPLIT_NAMES else split): paths for split, paths in local.items()}


def dataset_fingerprints(corpus: Corpus) -> list[str]:
    return [getattr(split, "_fingerprint", "") for split in (corpus.train, corpus.val)]


@contextmanager
def datasets_progress(enabled: bool):
    """Show or hide the `datasets` library's progress bars for the duration of the block."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    hide = not enabled and not are_progress_bars_disabled()
    if hide:
        disable_progress_bars()
    try:
        yield
    finally:
        if hide:
            enable_progress_bars()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
