"""Running experiments: configs, the CLI, run directories, tables (the method never imports it)."""
