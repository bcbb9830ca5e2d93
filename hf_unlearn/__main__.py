import sys

from hf_unlearn.cli import main


if __name__ == "__main__":
    sys.exit(main())
