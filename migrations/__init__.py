"""Oneshot's alembic environment and revisions, shipped in the wheel and run by the code.

:mod:`durable.migrate` points alembic at this directory; ``alembic.ini`` beside it is only for
developers who run the ``alembic`` command by hand.
"""
