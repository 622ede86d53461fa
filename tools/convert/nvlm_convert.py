"""The conversion entry point at the top of the repository: ``python tools/convert/nvlm_convert.py ARGS``
is ``nvlm-convert ARGS`` (``nvlm_train.cli.convert``: ``hf-to-mcore``, ``mcore-to-hf``, ``verify``;
``--help`` lists them). Kept for users who run tools from a checkout without installing the scripts."""

import sys

from nvlm_train.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
