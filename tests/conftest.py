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


# ---- shared fixtures --------------------------------------------------------------------------------------------

import contextlib  # noqa: E402
import io  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def single_thread():
    """One intra-op thread for the test's duration: bitwise comparisons must not depend on the thread split."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def real_tofu_dir():
    """The real TOFU copy: the folder `$HF_UNLEARN_TOFU_DIR` names. `make test` sets it (to the data beside the
    checkout, where CI keeps it); without it the test is skipped with this reason, and under CI (`$CI` set) it fails,
    so that CI never passes without having read the real data."""
    from hf_unlearn.benchmarks.tofu_data import default_tofu_dir

    folder = default_tofu_dir()  # set to a folder without TOFU's files: a one-line error
    if folder is None:
        if os.environ.get("CI"):
            pytest.fail("needs the real TOFU data: set HF_UNLEARN_TOFU_DIR to a folder of TOFU <config>.json files")
        pytest.skip(reason="needs the real TOFU data: set HF_UNLEARN_TOFU_DIR to a folder of TOFU <config>.json files")
    return folder


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE tokenizer trained on the synthetic benchmark's text (with a chat template)."""
    from tests.helpers import synthetic_tokenizer

    return synthetic_tokenizer()


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
    """The synthetic benchmark (10 authors x 4 QA) as a local TOFU folder."""
    from hf_unlearn.benchmarks.synthetic import write_synthetic_tofu

    return write_synthetic_tofu(tmp_path_factory.mktemp("synthetic") / "data", num_authors=10, qa_per_author=4)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A saved tiny Llama (hidden 32) with its tokenizer: the model folder recipes and commands are pointed at."""
    from hf_unlearn.tiny import build_tiny_model

    folder = tmp_path_factory.mktemp("tiny_model")
    model = build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def memorised_model_dir(tmp_path_factory):
    """A tiny Llama that has memorised the synthetic benchmark's QA (forget probability near 1), saved."""
    from tests.helpers import memorised_model

    model, tokenizer = memorised_model()
    folder = tmp_path_factory.mktemp("memorised")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def cli():
    """Run `hf-unlearn ARGS` in-process: returns (exit code, stdout, stderr)."""
    from hf_unlearn.cli import main

    def run(*args: str):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
        return code, out.getvalue(), err.getvalue()

    return run
