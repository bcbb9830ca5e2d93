import os


# Tests never reach the Hub; set before transformers/datasets are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
# pytest-xdist runs one worker per core: more than one intra-op thread each only oversubscribes the CPU.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    import datasets

    datasets.disable_progress_bars()
