"""Tools for tuning and checking the kernels on a GPU machine (see README.md beside this file)."""
