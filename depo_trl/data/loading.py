"""Loading a DePO dataset for training: a folder the builder wrote, a data file, or a Hub dataset, with the split a
recipe names."""

import os

from datasets import Dataset, DatasetDict, IterableDataset, load_dataset, load_from_disk

from ..user_errors import UsageError, check_dataset_source, hub_failure


_DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
BUILD_THE_DATA = "build it with `python -m depo_trl.data.build ...`, or pass a Hub dataset id you can reach"


def load_depo_dataset(name: str, config: str | None = None, streaming: bool = False) -> DatasetDict:
    """A DatasetDict from a local builder output / data file, or from the Hub. Paths that look local are never looked
    up on the Hub; what cannot be loaded is a [`UsageError`] naming `dataset_name`."""
    check_dataset_source("dataset_name", name, BUILD_THE_DATA)
    if os.path.isdir(name):
        try:
            dataset = load_from_disk(name)
        except FileNotFoundError:
            raise UsageError(
                f"dataset_name {name}: a folder, but not a saved dataset (no dataset_dict.json or dataset_info.json); "
                f"{BUILD_THE_DATA}."
            ) from None
        return dataset if isinstance(dataset, DatasetDict) else DatasetDict({"train": dataset})
    if os.path.isfile(name):
        extension = os.path.splitext(name)[1]
        if extension not in _DATA_FILE_BUILDERS:
            raise UsageError(
                f"dataset_name {name}: a {extension or 'extensionless'} file; pass a builder output folder or a "
                f"{'/'.join(_DATA_FILE_BUILDERS)} file."
            )
        if os.path.getsize(name) == 0:
            raise UsageError(f"dataset_name {name}: the file is empty; {BUILD_THE_DATA}.")
        return load_dataset(_DATA_FILE_BUILDERS[extension], data_files=name, streaming=streaming)
    try:
        return load_dataset(name, config, streaming=streaming)
    except Exception as error:  # the Hub client raises many types; all mean the same thing to the user
        raise hub_failure("dataset_name", name, error, BUILD_THE_DATA) from None


def select_split(dataset: DatasetDict, setting: str, split: str, name: str) -> Dataset | IterableDataset:
    """The split that `setting` (e.g. `dataset_train_split`) names, which must exist and have rows."""
    if split not in dataset:
        raise UsageError(f"{setting} {split}: dataset_name {name} has no such split (it has {list(dataset)}).")
    if hasattr(dataset[split], "__len__") and len(dataset[split]) == 0:
        raise UsageError(f"dataset_name {name}: the {split} split has no rows; {BUILD_THE_DATA}.")
    return dataset[split]


def add_system_prompt(dataset: DatasetDict, system_prompt: str) -> DatasetDict:
    """`dataset` with a system message before both the short and the long prompt of every row."""
    system = [{"role": "system", "content": system_prompt}]

    def prepend(row):
        updated = {"prompt": system + row["prompt"]}
        if "long_prompt" in row:
            updated["long_prompt"] = system + row["long_prompt"]
        return updated

    return dataset.map(prepend)
