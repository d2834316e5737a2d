"""``python -m cstore``: the same as the ``cstore`` command."""
from cstore.cli import main

if __name__ == "__main__":
    main()
