"""`python -m imageserver.tokens`, where the docs have always said; the code is
`imageserver.access.tokens`."""

import sys

from imageserver.access.tokens import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
