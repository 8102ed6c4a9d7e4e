"""Command-line options shared by several commands (data set, device, progress, fractions).

Only argparse and the standard library are imported here, so that building the parser (and
`nasaudit --help`) never imports torch. Each command keeps its own help texts and defaults; the
helpers only make sure the flags are spelled and validated the same way everywhere.
"""

from __future__ import annotations

import argparse

# The names `nasaudit.data.load_dataset` accepts. Equal to `nasaudit.data.DATASETS` (a test keeps
# them equal); not imported from there because nasaudit.data imports torch.
DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "imagenet32", "digits")

DEVICE_HELP = "auto | cpu | cuda | cuda:N"


def add_data_options(
    parser: argparse.ArgumentParser,
    *,
    dataset_help: str,
    dataset_default: str | None = None,
    data_dir_help: str = "folder with the data set files",
    download_help: str | None = None,
    num_classes_help: str | None = None,
) -> None:
    """--dataset (one of DATASETS) and --data-dir; --download and --num-classes when their help
    text is given (commands that load the data set themselves)."""
    parser.add_argument(
        "--dataset", choices=DATASETS, default=dataset_default, help=dataset_help
    )
    parser.add_argument("--data-dir", default=None, help=data_dir_help)
    if download_help is not None:
        parser.add_argument("--download", action="store_true", help=download_help)
    if num_classes_help is not None:
        parser.add_argument("--num-classes", type=int, default=None, help=num_classes_help)


def add_device_option(parser: argparse.ArgumentParser, *, show_default: bool = False) -> None:
    """--device (default "auto"; resolved by nasaudit.infra.device.resolve_device)."""
    suffix = " (default: auto)" if show_default else ""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP + suffix)


def add_progress_option(parser: argparse.ArgumentParser, help: str = "no progress bars") -> None:
    """--no-progress: turn the tqdm bars off (args.no_progress)."""
    parser.add_argument("--no-progress", action="store_true", help=help)




def params_from_flags(cls: type, values: dict, flags: dict[str, str], *, source: str):
    """`make_params(cls, values)` from command-line strings, where a bad value's error names
    its flag (`flags`: field -> flag), e.g. "--epochs: epochs must be >= 1, got 0"."""
    from nasaudit.infra.errors import InputError
    from nasaudit.infra.params import ParamError, make_params

    try:
        return make_params(cls, values, source=source)
    except ParamError as exc:
        if exc.field in flags:
            raise InputError(flags[exc.field], exc.problem) from None
        raise




def check_seed(flag: str, value):
    """`value` if it is a seed in 0..2^63-1 (or None), else InputError naming `flag`."""
    from nasaudit.infra.errors import InputError
    from nasaudit.infra.limits import MAX_SEED

    if value is not None and not 0 <= value <= MAX_SEED:
        raise InputError(flag, f"must be a seed in 0..2^63-1, got {value}")
    return value
