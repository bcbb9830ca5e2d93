from hf_unlearn.cli import main
from hf_unlearn.distributed import exit_process


if __name__ == "__main__":
    exit_process(main())
