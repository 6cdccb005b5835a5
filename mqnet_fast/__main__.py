import sys

from mqnet_fast.cli import main

if __name__ == "__main__":  # not when a --jobs worker process (multiprocessing's spawn) imports it
    sys.exit(main())
