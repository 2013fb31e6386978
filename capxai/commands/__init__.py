"""capxai.commands: what a ``capxai`` command runs beyond the library calls (reading inputs, writing result files
and figures); imported by the CLI and the demo only."""
