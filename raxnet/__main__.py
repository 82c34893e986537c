"""``python -m raxnet ...`` is the same as the ``raxnet`` console script."""

from raxnet.cli import main

if __name__ == "__main__":
    main()
