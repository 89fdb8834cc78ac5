"""Running experiments: config files, the command line, run directories, logs, tables.

The machinery around the method (``splitlora``); the method never imports it.
"""
