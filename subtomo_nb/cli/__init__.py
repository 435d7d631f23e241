"""The ``subtomo`` command line (RELION flag names)."""
