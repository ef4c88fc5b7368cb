"""The ``vstore`` command line (click). Thin commands over the library's API."""
