"""`python -m imageserver.signing`, where the docs have always said; the code is
`imageserver.access.signing`."""

import sys

from imageserver.access.signing import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
