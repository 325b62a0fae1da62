#!/usr/bin/env python
"""Entry point: ``python manage.py COMMAND ...`` (the same as the ``a2v`` console script)."""

from a2v_search.cli import main

if __name__ == "__main__":
    main()
