"""``python -m odinw_bench download``: fetch, verify and unpack ODinW dataset zips, then check their layout."""

from __future__ import annotations

import argparse
import os

HELP = "download and unpack ODinW datasets (resumable, verified, safe extraction) and check their layout"

EPILOG = """\
examples:
  python -m odinw_bench download --suite odinw13 --data-root DATASET/odinw
  python -m odinw_bench download --task aquarium,pothole --data-root DATASET/odinw --keep-zip
  python -m odinw_bench download --task aquarium --data-root DATASET/odinw --force      # fetch and unpack again
  ODINW_BENCH_DOWNLOAD_URL=http://mirror.local/odinw_35 python -m odinw_bench download --task pistols

Zips come from https://huggingface.co/GLIPModel/GLIP/resolve/main/odinw_35/<Name>.zip unless --base-url or
$ODINW_BENCH_DOWNLOAD_URL says otherwise. An interrupted download resumes when the command is run again.
Tasks whose files are already present are skipped (use --force to fetch them again).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--suite", help="task suite to download, e.g. odinw13 or odinw35")
    which.add_argument("--task", help="task name(s), comma-separated, or a task YAML path")
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder the datasets unpack into (default: $ODINW_ROOT, else DATASET/odinw)",
    )
    parser.add_argument(
        "--base-url",
        default=None,
        help="folder URL holding <Name>.zip (default: $ODINW_BENCH_DOWNLOAD_URL, else GLIPModel/GLIP on Hugging Face)",
    )
    parser.add_argument("--keep-zip", action="store_true", help="keep the zip files after extracting them")
    parser.add_argument("--force", action="store_true", help="download and extract even if the data is present")


def run(args: argparse.Namespace) -> int:
    """Resolve the tasks, download their zips and report the layout check."""
    from odinw_bench.data.download import download_tasks, raise_for_layout
    from odinw_bench.tasks.registry import resolve_data_root, resolve_tasks

    spec = args.suite or args.task
    tasks = [item[0] if isinstance(item, tuple) else item for item in resolve_tasks(spec)]
    real = [t for t in tasks if not t.synthetic]
    if not real:
        print(f"generated locally, nothing to download: {', '.join(t.name for t in tasks)}")
        return 0
    # The same rule every command uses: --data-root, then $ODINW_ROOT, then DATASET/odinw (as GLIP's script).
    data_root = resolve_data_root(real[0], args.data_root)
    results = download_tasks(real, data_root, base_url=args.base_url, keep_zip=args.keep_zip, force=args.force)
    for result in results:
        print(f"{result.zip_name}: {result.action} ({result.url})")
        for layout in result.layouts:
            mark = "ok" if layout.ok else f"{len(layout.missing)} missing"
            fewshot = f"few-shot files {layout.fewshot_present}/{layout.fewshot_expected}"
            print(f"  {layout.task}: {mark}; {fewshot}")
    skipped = [t.name for t in tasks if t.synthetic]
    if skipped:
        print(f"generated locally, nothing to download: {', '.join(skipped)}")
    raise_for_layout(results)
    print(f"data root: {os.path.abspath(data_root)}")
    return 0
