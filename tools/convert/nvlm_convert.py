"""Thin wrapper: ``python tools/convert/nvlm_convert.py ...`` == ``nvlm-convert ...``."""

import sys

from nvlm_train.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
