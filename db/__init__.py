"""The metadata store: SQLite through SQLAlchemy 2.0. ``schema`` holds the tables, ``values`` the values passed
around, ``engine`` the database and its upgrades (``migrations``), ``repo`` the queries, with ``tracks``,
``labels``, ``activities`` and ``clusterings`` beside them (docs/design.md)."""
